from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]

class Want(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WANT_EXPECTATIONS: _ClassVar[Want]
    WANT_JACOBIANS: _ClassVar[Want]
    WANT_VJP: _ClassVar[Want]
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
WANT_EXPECTATIONS: Want
WANT_JACOBIANS: Want
WANT_VJP: Want

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Circuit(_message.Message):
    __slots__ = ("n_qubits", "n_layers", "entangler", "version")
    N_QUBITS_FIELD_NUMBER: _ClassVar[int]
    N_LAYERS_FIELD_NUMBER: _ClassVar[int]
    ENTANGLER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    n_qubits: int
    n_layers: int
    entangler: str
    version: int
    def __init__(self, n_qubits: _Optional[int] = ..., n_layers: _Optional[int] = ..., entangler: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class OptionValue(_message.Message):
    __slots__ = ("integer", "number", "flag", "text")
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    integer: int
    number: float
    flag: bool
    text: str
    def __init__(self, integer: _Optional[int] = ..., number: _Optional[float] = ..., flag: _Optional[bool] = ..., text: _Optional[str] = ...) -> None: ...

class Backend(_message.Message):
    __slots__ = ("name", "shots", "seed", "readout_error", "depolarizing", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: OptionValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[OptionValue, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHOTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    READOUT_ERROR_FIELD_NUMBER: _ClassVar[int]
    DEPOLARIZING_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    shots: int
    seed: int
    readout_error: float
    depolarizing: float
    options: _containers.MessageMap[str, OptionValue]
    def __init__(self, name: _Optional[str] = ..., shots: _Optional[int] = ..., seed: _Optional[int] = ..., readout_error: _Optional[float] = ..., depolarizing: _Optional[float] = ..., options: _Optional[_Mapping[str, OptionValue]] = ...) -> None: ...

class Gradient(_message.Message):
    __slots__ = ("method", "delta", "samples", "seed")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    method: str
    delta: float
    samples: int
    seed: int
    def __init__(self, method: _Optional[str] = ..., delta: _Optional[float] = ..., samples: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("circuit", "backend", "theta", "angles", "want", "grad_out", "gradient", "include_expectations", "first_component", "n_components", "keep_jacobians", "handle")
    CIRCUIT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    THETA_FIELD_NUMBER: _ClassVar[int]
    ANGLES_FIELD_NUMBER: _ClassVar[int]
    WANT_FIELD_NUMBER: _ClassVar[int]
    GRAD_OUT_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EXPECTATIONS_FIELD_NUMBER: _ClassVar[int]
    FIRST_COMPONENT_FIELD_NUMBER: _ClassVar[int]
    N_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    KEEP_JACOBIANS_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    circuit: Circuit
    backend: Backend
    theta: Tensor
    angles: Tensor
    want: Want
    grad_out: Tensor
    gradient: Gradient
    include_expectations: bool
    first_component: int
    n_components: int
    keep_jacobians: bool
    handle: str
    def __init__(self, circuit: _Optional[_Union[Circuit, _Mapping]] = ..., backend: _Optional[_Union[Backend, _Mapping]] = ..., theta: _Optional[_Union[Tensor, _Mapping]] = ..., angles: _Optional[_Union[Tensor, _Mapping]] = ..., want: _Optional[_Union[Want, str]] = ..., grad_out: _Optional[_Union[Tensor, _Mapping]] = ..., gradient: _Optional[_Union[Gradient, _Mapping]] = ..., include_expectations: _Optional[bool] = ..., first_component: _Optional[int] = ..., n_components: _Optional[int] = ..., keep_jacobians: _Optional[bool] = ..., handle: _Optional[str] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("expectations", "jacobian_theta", "jacobian_angles", "vjp_theta", "vjp_angles", "compute_seconds", "handle")
    EXPECTATIONS_FIELD_NUMBER: _ClassVar[int]
    JACOBIAN_THETA_FIELD_NUMBER: _ClassVar[int]
    JACOBIAN_ANGLES_FIELD_NUMBER: _ClassVar[int]
    VJP_THETA_FIELD_NUMBER: _ClassVar[int]
    VJP_ANGLES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    expectations: Tensor
    jacobian_theta: Tensor
    jacobian_angles: Tensor
    vjp_theta: Tensor
    vjp_angles: Tensor
    compute_seconds: float
    handle: str
    def __init__(self, expectations: _Optional[_Union[Tensor, _Mapping]] = ..., jacobian_theta: _Optional[_Union[Tensor, _Mapping]] = ..., jacobian_angles: _Optional[_Union[Tensor, _Mapping]] = ..., vjp_theta: _Optional[_Union[Tensor, _Mapping]] = ..., vjp_angles: _Optional[_Union[Tensor, _Mapping]] = ..., compute_seconds: _Optional[float] = ..., handle: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackendInfo(_message.Message):
    __slots__ = ("name", "gradient_methods", "hardware", "max_shots", "max_batch", "queue_latency_s", "seeded", "options")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_METHODS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    MAX_SHOTS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    SEEDED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    gradient_methods: _containers.RepeatedScalarFieldContainer[str]
    hardware: bool
    max_shots: int
    max_batch: int
    queue_latency_s: float
    seeded: bool
    options: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., gradient_methods: _Optional[_Iterable[str]] = ..., hardware: _Optional[bool] = ..., max_shots: _Optional[int] = ..., max_batch: _Optional[int] = ..., queue_latency_s: _Optional[float] = ..., seeded: _Optional[bool] = ..., options: _Optional[_Iterable[str]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_qubits", "max_layers", "max_message_bytes", "max_tokens_per_request", "max_shots", "max_work_per_request", "max_request_seconds", "default_deadline_s", "max_deadline_s", "max_inflight", "max_queue", "max_replicas", "max_resident_bytes", "resident_ttl_s")
    MAX_QUBITS_FIELD_NUMBER: _ClassVar[int]
    MAX_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_SHOTS_FIELD_NUMBER: _ClassVar[int]
    MAX_WORK_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    MAX_DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_TTL_S_FIELD_NUMBER: _ClassVar[int]
    max_qubits: int
    max_layers: int
    max_message_bytes: int
    max_tokens_per_request: int
    max_shots: int
    max_work_per_request: int
    max_request_seconds: float
    default_deadline_s: float
    max_deadline_s: float
    max_inflight: int
    max_queue: int
    max_replicas: int
    max_resident_bytes: int
    resident_ttl_s: float
    def __init__(self, max_qubits: _Optional[int] = ..., max_layers: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_tokens_per_request: _Optional[int] = ..., max_shots: _Optional[int] = ..., max_work_per_request: _Optional[int] = ..., max_request_seconds: _Optional[float] = ..., default_deadline_s: _Optional[float] = ..., max_deadline_s: _Optional[float] = ..., max_inflight: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_replicas: _Optional[int] = ..., max_resident_bytes: _Optional[int] = ..., resident_ttl_s: _Optional[float] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("server_version", "proto_version", "circuit_version", "backends", "limits", "replicas", "queue_depth", "pending_replicas", "pending_reason")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTO_VERSION_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    PENDING_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    PENDING_REASON_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    proto_version: int
    circuit_version: int
    backends: _containers.RepeatedCompositeFieldContainer[BackendInfo]
    limits: Limits
    replicas: int
    queue_depth: int
    pending_replicas: int
    pending_reason: str
    def __init__(self, server_version: _Optional[str] = ..., proto_version: _Optional[int] = ..., circuit_version: _Optional[int] = ..., backends: _Optional[_Iterable[_Union[BackendInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., replicas: _Optional[int] = ..., queue_depth: _Optional[int] = ..., pending_replicas: _Optional[int] = ..., pending_reason: _Optional[str] = ...) -> None: ...

class ScaleRequest(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    def __init__(self, replicas: _Optional[int] = ...) -> None: ...

class ScaleResponse(_message.Message):
    __slots__ = ("replicas", "target")
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    target: int
    def __init__(self, replicas: _Optional[int] = ..., target: _Optional[int] = ...) -> None: ...
