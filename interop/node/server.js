// A @grpc/grpc-js server for a few Ameide roster methods, for the Rust SDK's interop tests.
//
// Usage: node server.js <proto-dir> <log-file>
// Prints the port it listens on (127.0.0.1), then serves until killed. Every call appends one
// JSON line to <log-file>: the method, the metadata and the deadline left in seconds.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [protoDir, logFile] = process.argv.slice(2);
const definition = loader.loadSync(
  ['ameide_core_proto/graph/v1/graph.proto', 'ameide_core_proto/inference/v1/inference.proto'].map((f) => path.join(protoDir, f)),
  { includeDirs: [protoDir], keepCase: false, longs: String, enums: String, defaults: true },
);
const proto = grpc.loadPackageDefinition(definition);
const graph = proto.ameide_core_proto.graph.v1;
const inference = proto.ameide_core_proto.inference.v1;

function record(method, call) {
  const metadata = {};
  for (const [key, value] of Object.entries(call.metadata.getMap())) {
    if (!key.endsWith('-bin')) metadata[key] = String(value);
  }
  // grpc-js gives the deadline as a Date or as epoch milliseconds (Infinity when none).
  const deadline = call.getDeadline();
  const at = deadline instanceof Date ? deadline.getTime() : Number(deadline);
  const left = Number.isFinite(at) ? (at - Date.now()) / 1000 : null;
  fs.appendFileSync(logFile, JSON.stringify({ method, metadata, time_remaining: left }) + '\n');
}

const seen = new Map();

const server = new grpc.Server();
server.addService(graph.GraphService.service, {
  ListRepositories(call, callback) {
    // The first attempt of every request id fails with UNAVAILABLE.
    record('ListRepositories', call);
    const id = String(call.metadata.get('x-request-id')[0] || '');
    const attempt = seen.get(id) || 0;
    seen.set(id, attempt + 1);
    if (attempt === 0) {
      callback({ code: grpc.status.UNAVAILABLE, details: 'node backend warming up' });
      return;
    }
    callback(null, { repositories: [{ repositoryId: 'node-1', key: 'from-node' }] });
  },
  DeleteElement(call, callback) {
    record('DeleteElement', call);
    callback({ code: grpc.status.NOT_FOUND, details: 'tab\there\r\nline two \u{1F980} \u2713 \u00fcn\u00ef' });
  },
  GetElement(call, callback) {
    record('GetElement', call);
    setTimeout(() => callback(null, {}), 3000);
  },
});
server.addService(inference.InferenceService.service, {
  Generate(call) {
    record('Generate', call);
    ['Hello', ' from', ' grpc-js'].forEach((token, index) => call.write({ token, index }));
    call.end();
  },
});
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
  console.log(port);
});
