#!/usr/bin/env node
// A second-language client of hyqut.qworker.v1 (tests/test_js_client.py runs it).
//
//   node tests/js/client.js 127.0.0.1:50051            # token, if the server has one: $HYQUT_TOKEN
//
// It proves the wire contract stands on its own: the service is loaded from
// proto/hyqut/qworker/v1/qworker.proto at run time (no generated code, none of our Python), the
// request is built from scratch here, and the float32 tensors are packed and unpacked by hand
// (little endian, row-major, as the proto's Tensor says). It calls, each with a deadline:
//   1. grpc.health.v1.Health/Check, for the whole server ("") and for the QWorker service;
//   2. Info, for the circuit version the server speaks;
//   3. Evaluate on a small batch: 2 qubits, 1 ring layer, theta all zeros, on backend "local".
// and prints one JSON object on stdout: each call's answer, or its error as
// {"code": 16, "name": "UNAUTHENTICATED", "details": "..."}. Exit status: 0 when every call
// succeeded, 3 when a call failed (the JSON still says which), 2 on bad usage.

"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");
const QWORKER_PROTO = "hyqut/qworker/v1/qworker.proto";
const DEADLINE_MS = 20000; // every call gets one; a small batch takes milliseconds
const FALLBACK_CIRCUIT_VERSION = 1; // used only when Info failed, so Evaluate still shows its own error

// Loader options: enums as their names, 64-bit integers as JS numbers (shapes are small), every
// field present in answers (proto3 defaults included), `bytes` left as Buffers.
const LOAD_OPTIONS = { keepCase: true, enums: String, longs: Number, defaults: true, oneofs: true };

// grpc/health/v1/health.proto, the standard health service, as a protobufjs JSON namespace: it is
// not in our proto/ tree, and these few lines spare a dependency.
const HEALTH_JSON = {
  nested: {
    grpc: {
      nested: {
        health: {
          nested: {
            v1: {
              nested: {
                HealthCheckRequest: { fields: { service: { type: "string", id: 1 } } },
                HealthCheckResponse: {
                  fields: { status: { type: "ServingStatus", id: 1 } },
                  nested: {
                    ServingStatus: { values: { UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2, SERVICE_UNKNOWN: 3 } },
                  },
                },
                Health: {
                  methods: { Check: { requestType: "HealthCheckRequest", responseType: "HealthCheckResponse" } },
                },
              },
            },
          },
        },
      },
    },
  },
};

// The batch: rows of input angles (RY(a[2i]), RZ(a[2i+1]) on qubit i). The first four put each
// qubit in a basis state (H then RY(-pi/2) is |0>, H then RY(+pi/2) is |1>), so with theta = 0 the
// answer is analytic: the ring's CNOT 0->1 then CNOT 1->0 map bits (b0, b1) to (b1, b0 ^ b1), and
// <Z_i> = 1 - 2 b_i. The last two rows are generic, checked against the Python simulator.
const HALF_PI = Math.PI / 2;
const ANGLE_ROWS = [
  [-HALF_PI, 0.0, -HALF_PI, 0.0],
  [HALF_PI, 0.0, -HALF_PI, 0.0],
  [-HALF_PI, 0.0, HALF_PI, 0.0],
  [HALF_PI, 0.0, HALF_PI, 0.0],
  [0.3, -1.2, 2.5, 0.7],
  [1.1, 0.4, -0.9, 3.0],
];
const N_QUBITS = 2;
const N_LAYERS = 1;

/** float32 little endian, row-major: the bytes of a Tensor with DTYPE_FLOAT32. */
function packFloat32(values) {
  const buf = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buf.writeFloatLE(v, 4 * i));
  return buf;
}

/** A Tensor message's elements as JS numbers, checked against its shape and dtype. */
function unpackTensor(tensor) {
  const itemsize = { DTYPE_FLOAT32: 4, DTYPE_FLOAT64: 8 }[tensor.dtype];
  if (itemsize === undefined) throw new Error(`unknown dtype ${tensor.dtype}`);
  const count = tensor.shape.reduce((a, b) => a * b, 1);
  if (tensor.data.length !== count * itemsize) {
    throw new Error(`tensor of shape [${tensor.shape}] has ${tensor.data.length} bytes, expected ${count * itemsize}`);
  }
  const values = [];
  for (let i = 0; i < count; i++) {
    values.push(itemsize === 4 ? tensor.data.readFloatLE(4 * i) : tensor.data.readDoubleLE(8 * i));
  }
  return values;
}

/** Rows of `width` from a flat list. */
function rows(flat, width) {
  const out = [];
  for (let i = 0; i < flat.length; i += width) out.push(flat.slice(i, i + width));
  return out;
}

/** A unary call as a promise: {ok: answer} or {error: {code, name, details}}. */
function call(client, method, request, metadata) {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, metadata, { deadline }, (err, answer) => {
      if (err) {
        const name = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || "UNKNOWN";
        resolve({ error: { code: err.code, name, details: err.details } });
      } else {
        resolve({ ok: answer });
      }
    });
  });
}

async function main(argv) {
  if (argv.length !== 1 || argv[0].startsWith("-")) {
    process.stderr.write("usage: node tests/js/client.js HOST:PORT   (token, if any, from $HYQUT_TOKEN)\n");
    return 2;
  }
  const target = argv[0];
  const qworkerPkg = grpc.loadPackageDefinition(
    protoLoader.loadSync(QWORKER_PROTO, { ...LOAD_OPTIONS, includeDirs: [PROTO_ROOT] }),
  );
  const healthPkg = grpc.loadPackageDefinition(protoLoader.fromJSON(HEALTH_JSON, LOAD_OPTIONS));
  const credentials = grpc.credentials.createInsecure();
  const qworker = new qworkerPkg.hyqut.qworker.v1.QWorker(target, credentials);
  const health = new healthPkg.grpc.health.v1.Health(target, credentials);

  const metadata = new grpc.Metadata();
  if (process.env.HYQUT_TOKEN) metadata.set("authorization", `Bearer ${process.env.HYQUT_TOKEN}`);
  const report = { target, token_sent: Boolean(process.env.HYQUT_TOKEN), health: {} };

  // Health is open: probes carry no credentials, so none are sent here either.
  for (const service of ["", "hyqut.qworker.v1.QWorker"]) {
    const r = await call(health, "Check", { service }, new grpc.Metadata());
    report.health[service] = r.ok ? r.ok.status : r;
  }

  const info = await call(qworker, "Info", {}, metadata);
  report.info = info.ok || info;

  const angles = packFloat32(ANGLE_ROWS.flat());
  const nParams = 2 * N_QUBITS * N_LAYERS; // |theta|: RZ and RY on every qubit, per layer
  const request = {
    circuit: {
      n_qubits: N_QUBITS,
      n_layers: N_LAYERS,
      entangler: "ring",
      version: info.ok ? info.ok.circuit_version : FALLBACK_CIRCUIT_VERSION,
    },
    backend: { name: "local" },
    theta: { shape: [nParams], dtype: "DTYPE_FLOAT32", data: packFloat32(new Array(nParams).fill(0)) },
    angles: { shape: [ANGLE_ROWS.length, 2 * N_QUBITS], dtype: "DTYPE_FLOAT32", data: angles },
    want: "WANT_EXPECTATIONS",
  };
  const evaluated = await call(qworker, "Evaluate", request, metadata);
  report.evaluate = {
    circuit: request.circuit,
    // exactly what was sent: the float32 values, not the float64 literals above
    angles: rows(unpackTensor(request.angles), 2 * N_QUBITS),
  };
  if (evaluated.ok) {
    const z = evaluated.ok.expectations;
    report.evaluate.expectations = { shape: z.shape, dtype: z.dtype, values: rows(unpackTensor(z), N_QUBITS) };
    report.evaluate.compute_seconds = evaluated.ok.compute_seconds;
  } else {
    report.evaluate.error = evaluated.error;
  }

  qworker.close();
  health.close();
  const failed = [report.info, report.evaluate, ...Object.values(report.health)].some((r) => r && r.error);
  report.ok = !failed;
  process.stdout.write(`${JSON.stringify(report)}\n`);
  return failed ? 3 : 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`client.js: ${err && err.stack ? err.stack : err}\n`);
    process.exitCode = 1;
  },
);
