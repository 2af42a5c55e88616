#!/usr/bin/env node
// Decodes every sample written by xds-emit-samples with Envoy's real .proto files (bundled in
// the npm package @grpc/grpc-js-xds) and fails on anything they would not accept exactly:
//   - a field number the real message does not have (an "unknown field"),
//   - a wire type that does not match the real field's type (packed repeated scalars allowed),
//   - an enum number the real enum does not define, a string that is not valid UTF-8,
//   - malformed framing, or bytes that protobufjs itself cannot decode.
// google.protobuf.Any is expanded recursively: its value is checked against the type named by
// type_url, which must be known to the real definitions.
// Usage: node tests/xds/decode_check.js <samples-dir>
'use strict';
const fs = require('fs');
const path = require('path');

require('@grpc/proto-loader'); // registers google/protobuf well-known types with protobufjs
const { loadProtosWithOptionsSync } = require('@grpc/proto-loader/build/src/util');

const deps = path.join(path.dirname(require.resolve('@grpc/grpc-js-xds/package.json')), 'deps');
const FILES = [
  'envoy/service/discovery/v3/discovery.proto',
  'envoy/config/listener/v3/listener.proto',
  'envoy/config/route/v3/route.proto',
  'envoy/config/cluster/v3/cluster.proto',
  'envoy/config/endpoint/v3/endpoint.proto',
  'envoy/config/rbac/v3/rbac.proto',
  'envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto',
  'envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto',
  'envoy/extensions/filters/network/rbac/v3/rbac.proto',
  'envoy/extensions/filters/http/router/v3/router.proto',
  'envoy/extensions/filters/http/rbac/v3/rbac.proto',
  'envoy/extensions/filters/listener/original_dst/v3/original_dst.proto',
  'envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto',
  'envoy/extensions/transport_sockets/tls/v3/tls.proto',
  'envoy/extensions/transport_sockets/tls/v3/secret.proto',
  'envoy/extensions/upstreams/http/v3/http_protocol_options.proto',
  'google/protobuf/struct.proto',
  'google/protobuf/empty.proto',
];
const root = loadProtosWithOptionsSync(FILES, {
  keepCase: true,
  includeDirs: ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => path.join(deps, d) + '/'),
});

const WIRE = {
  int32: 0, int64: 0, uint32: 0, uint64: 0, sint32: 0, sint64: 0, bool: 0,
  fixed64: 1, sfixed64: 1, double: 1,
  fixed32: 5, sfixed32: 5, float: 5,
  string: 2, bytes: 2,
};
const utf8 = new TextDecoder('utf-8', { fatal: true });

class Reader {
  constructor(buf, start, end) { this.buf = buf; this.pos = start; this.end = end; }
  varint() {
    let v = 0n, shift = 0n;
    for (;;) {
      if (this.pos >= this.end) throw new Error('truncated varint');
      const b = this.buf[this.pos++];
      v |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
      shift += 7n;
      if (shift > 63n) throw new Error('varint too long');
    }
  }
  skip(n) {
    if (n > this.end - this.pos) throw new Error('field runs past the end');
    const at = this.pos; this.pos += n; return at;
  }
}

let fieldsSeen = 0;

function checkScalar(type, wt, r, where, enumType) {
  if (wt === 2 && type !== 'string' && type !== 'bytes') {
    // packed repeated scalars
    const len = Number(r.varint()); const at = r.skip(len);
    const sub = new Reader(r.buf, at, at + len);
    while (sub.pos < sub.end) checkScalar(type, WIRE[type] !== undefined ? WIRE[type] : 0, sub, where + '[]', enumType);
    return;
  }
  const want = enumType ? 0 : WIRE[type];
  if (want === undefined) throw new Error(`${where}: unsupported type ${type}`);
  if (wt !== want) throw new Error(`${where}: wire type ${wt}, the real field (${type}) needs ${want}`);
  switch (wt) {
    case 0: {
      const v = r.varint();
      if (enumType) {
        const n = Number(BigInt.asIntN(32, v));
        if (!Object.values(enumType.values).includes(n)) throw new Error(`${where}: ${n} is not a value of ${enumType.fullName}`);
      }
      break;
    }
    case 1: r.skip(8); break;
    case 5: r.skip(4); break;
    case 2: {
      const len = Number(r.varint()); const at = r.skip(len);
      if (type === 'string') {
        try { utf8.decode(r.buf.subarray(at, at + len)); } catch (e) { throw new Error(`${where}: not UTF-8`); }
      }
      break;
    }
    default: throw new Error(`${where}: wire type ${wt}`);
  }
}

// Walks <buf>[start,end) as message <type> of the real definitions.
function walk(type, buf, start, end, where) {
  const r = new Reader(buf, start, end);
  let anyUrl = null, anyValue = null;
  while (r.pos < r.end) {
    const key = r.varint();
    const id = Number(key >> 3n), wt = Number(key & 7n);
    const f = type.fieldsById[id];
    const fw = `${where}.${f ? f.name : '#' + id}`;
    if (!f) throw new Error(`${fw}: unknown field ${id} in ${type.fullName} (wire type ${wt})`);
    fieldsSeen++;
    f.resolve();
    if (f.map) {
      if (wt !== 2) throw new Error(`${fw}: map entry with wire type ${wt}`);
      const len = Number(r.varint()); const at = r.skip(len);
      const er = new Reader(buf, at, at + len);
      while (er.pos < er.end) {
        const k = er.varint(); const eid = Number(k >> 3n), ewt = Number(k & 7n);
        if (eid === 1) checkScalar(f.keyType, ewt, er, fw + '{key}');
        else if (eid === 2) {
          if (f.resolvedType && f.resolvedType.fieldsById) {
            if (ewt !== 2) throw new Error(`${fw}{value}: wire type ${ewt}`);
            const l2 = Number(er.varint()); const a2 = er.skip(l2);
            walk(f.resolvedType, buf, a2, a2 + l2, fw + '{value}');
          } else checkScalar(f.type, ewt, er, fw + '{value}', f.resolvedType);
        } else throw new Error(`${fw}: unknown map entry field ${eid}`);
      }
      continue;
    }
    if (f.resolvedType && f.resolvedType.fieldsById) { // message
      if (wt !== 2) throw new Error(`${fw}: wire type ${wt}, the real field (message ${f.resolvedType.fullName}) needs 2`);
      const len = Number(r.varint()); const at = r.skip(len);
      walk(f.resolvedType, buf, at, at + len, fw);
      continue;
    }
    const at0 = r.pos;
    checkScalar(f.type, wt, r, fw, f.resolvedType && f.resolvedType.values ? f.resolvedType : null);
    if (type.fullName === '.google.protobuf.Any') {
      const sub = new Reader(buf, at0, r.pos); const len = Number(sub.varint());
      if (id === 1) anyUrl = Buffer.from(buf.subarray(sub.pos, sub.pos + len)).toString('utf8');
      if (id === 2) anyValue = [sub.pos, sub.pos + len];
    }
  }
  if (type.fullName === '.google.protobuf.Any' && anyUrl !== null) {
    const name = anyUrl.slice(anyUrl.lastIndexOf('/') + 1);
    let inner;
    try { inner = root.lookupType(name); } catch (e) { throw new Error(`${where}: Any type ${anyUrl} is unknown to the real definitions`); }
    const [a, b] = anyValue || [0, 0];
    walk(inner, buf, a, b, `${where}<${name}>`);
  }
}

function mapEntryParent(name) {
  // protoc-c emits map entries as nested messages "<Parent>.<Field>Entry"; the real definitions
  // (protobufjs) model them as map fields. Those are checked through their parent.
  const dot = name.lastIndexOf('.');
  const parent = name.slice(0, dot), entry = name.slice(dot + 1);
  if (!entry.endsWith('Entry')) return null;
  let p;
  try { p = root.lookupType(parent); } catch (e) { return null; }
  for (const f of p.fieldsArray) {
    const camel = f.name.split('_').map((s) => s.charAt(0).toUpperCase() + s.slice(1)).join('') + 'Entry';
    if (f.map && camel === entry) return p;
  }
  return null;
}

function main() {
  const dir = process.argv[2];
  if (!dir) { console.error('usage: decode_check.js <samples-dir>'); process.exit(2); }
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.bin')).sort();
  let passed = 0, failed = 0, skipped = 0;
  const typesSeen = new Set();
  for (const file of files) {
    const name = file.replace(/\.bin$/, '').replace(/[@~].*$/, '');
    const buf = fs.readFileSync(path.join(dir, file));
    let type;
    try { type = root.lookupType(name); } catch (e) {
      if (mapEntryParent(name)) { skipped++; continue; }
      console.log(`FAIL ${file}: ${name} does not exist in the real definitions`); failed++; continue;
    }
    try {
      walk(type, buf, 0, buf.length, name.slice(name.lastIndexOf('.') + 1));
      type.decode(buf); // protobufjs must accept the bytes too
      passed++; typesSeen.add(name);
    } catch (e) {
      console.log(`FAIL ${file}: ${e.message}`); failed++;
    }
  }
  console.log(`xds decode check: ${passed} passed, ${failed} failed (${typesSeen.size} message types, ` +
    `${fieldsSeen} fields checked, ${skipped} map entry types checked through their parents)`);
  process.exit(failed || passed === 0 ? 1 : 0);
}
main();
