// A long-lived proxyless gRPC client: @grpc/grpc-js-xds (pure JS).
// usage: GRPC_XDS_BOOTSTRAP=file NODE_PATH=<tests/xds/node_modules> \
//          node client_loop.js [TARGET] [MAX_SECONDS]
// One line per call on stdout: "OK <server>" or "ERR <code name> <details>". Stops after
// MAX_SECONDS (default 300) or when stdin is closed.
'use strict';
const grpc = require('@grpc/grpc-js');
const xds = require('@grpc/grpc-js-xds');
xds.register();

const target = process.argv[2] || 'xds:///echo';
const maxMs = 1000 * +(process.argv[3] || 300);
const interval = +(process.env.INTERVAL || 50);

function str(field, s) { // length-delimited string field (short strings only)
  const b = Buffer.from(s, 'utf8');
  if (b.length > 127) throw new Error('string too long');
  return Buffer.concat([Buffer.from([(field << 3) | 2, b.length]), b]);
}
function decodeStrings(buf) {
  const out = {};
  let i = 0;
  while (i < buf.length) {
    const tag = buf[i++];
    let len = 0, shift = 0, b;
    do { b = buf[i++]; len |= (b & 0x7f) << shift; shift += 7; } while (b & 0x80);
    out[tag >> 3] = buf.slice(i, i + len).toString('utf8');
    i += len;
  }
  return out;
}
const codeNames = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));
const Client = grpc.makeGenericClientConstructor({
  Echo: {
    path: '/echo.Echo/Echo', requestStream: false, responseStream: false,
    requestSerialize: (s) => str(1, s), requestDeserialize: (b) => b,
    responseSerialize: (b) => b, responseDeserialize: decodeStrings,
  },
}, 'Echo');
const client = new Client(target, grpc.credentials.createInsecure());
const end = Date.now() + maxMs;
let n = 0, stopped = false;
process.stdin.on('end', () => { stopped = true; });
process.stdin.on('error', () => { stopped = true; });
process.stdin.resume();
function next() {
  if (stopped || Date.now() > end) { client.close(); process.exit(0); }
  client.Echo('hi-' + n++, { deadline: Date.now() + 2000 }, (err, res) => {
    if (err) {
      const details = String(err.details).replace(/\n/g, ' ');
      process.stdout.write(`ERR ${codeNames[err.code] || err.code} ${details}\n`);
    } else {
      process.stdout.write(`OK ${res[2]}\n`);
    }
    setTimeout(next, interval);
  });
}
next();
