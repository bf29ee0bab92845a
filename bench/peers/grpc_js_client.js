// The peer client of `cargo xtask bench`: Node's @grpc/grpc-js calling
// GraphService.GetRepository with the same payload as the Rust clients.
//
// Usage: node grpc_js_client.js <proto-dir> <port> <concurrency> <duration-ms> <rounds>
// Prints one JSON line per measured window: calls, seconds, cpu_seconds (this
// process), errors.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [protoDir, port, concurrency, durationMs, rounds] = process.argv.slice(2);
const definition = loader.loadSync(path.join(protoDir, 'ameide_core_proto/graph/v1/graph.proto'), {
  includeDirs: [protoDir],
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
});
const graph = grpc.loadPackageDefinition(definition).ameide_core_proto.graph.v1;
const client = new graph.GraphService(`127.0.0.1:${port}`, grpc.credentials.createInsecure());

function call(n) {
  return new Promise((resolve, reject) => {
    client.GetRepository({ repositoryId: `repo-${n}` }, (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const cpuSeconds = () => {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
};

async function window(workers, ms) {
  const state = { stop: false, recording: false, calls: 0, errors: 0, error: null };
  const worker = async (n) => {
    while (!state.stop) {
      try {
        await call(n);
        if (state.recording) state.calls += 1;
      } catch (error) {
        state.errors += 1;
        state.error = `${error.code}: ${error.details}`;
      }
      n += workers;
    }
  };
  const running = Array.from({ length: workers }, (_, n) => worker(n));
  await sleep(ms / 5);
  state.recording = true;
  const cpu0 = cpuSeconds();
  const t0 = process.hrtime.bigint();
  await sleep(ms);
  const calls = state.calls;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = cpuSeconds() - cpu0;
  state.stop = true;
  await Promise.all(running);
  return { calls, seconds, cpu_seconds: cpu, errors: state.errors, error: state.error };
}

(async () => {
  await call('warm-up');
  for (let round = 0; round < Number(rounds); round += 1) {
    console.log(JSON.stringify(await window(Number(concurrency), Number(durationMs))));
  }
  client.close();
})().catch((error) => {
  console.error(`grpc-js client failed: ${error.message}`);
  process.exit(1);
});
