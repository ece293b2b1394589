// Runs request cases with Node's fetch or http module and prints one JSON result a line.
//
// usage: node client.mjs fetch|http CASES.json
//
// CASES.json is a list of cases (see clients/clients_test.go, type clientCase). The http mode
// uses one keep-alive agent with a single socket, so consecutive cases share a connection.
import fs from 'node:fs';
import http from 'node:http';

const [mode, path] = process.argv.slice(2);
const cases = JSON.parse(fs.readFileSync(path, 'utf8'));
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function bodyOf(c) {
  return c.body_file ? fs.readFileSync(c.body_file) : null;
}

function chunksOf(c, body) {
  const out = [];
  let pos = 0;
  for (const n of c.chunks || []) {
    out.push(body.subarray(pos, pos + n));
    pos += n;
  }
  if (pos < body.length) out.push(body.subarray(pos));
  return out;
}

function result(c, status, headers, body, extra = {}) {
  return { id: c.id, status, headers, body_b64: Buffer.from(body).toString('base64'), ...extra };
}

// sseEvents parses "data:" lines from text chunks as they arrive.
function sseParser() {
  let buf = '';
  const events = [];
  let data = [];
  return {
    events,
    push(text) {
      buf += text;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).replace(/\r$/, '');
        buf = buf.slice(i + 1);
        if (line.startsWith('data:')) data.push(line.slice(5).trim());
        else if (line === '' && data.length) {
          events.push({ t: Date.now(), data: data.join('\n') });
          data = [];
        }
      }
    },
  };
}

async function runFetch(c) {
  const headers = new Headers();
  for (const [k, v] of c.headers || []) headers.append(k, v);
  const body = bodyOf(c);
  const init = { method: c.method, headers, redirect: 'manual' };
  if (body) {
    if (c.chunks) {
      const parts = chunksOf(c, body);
      init.body = new ReadableStream({
        pull(ctrl) {
          if (parts.length) ctrl.enqueue(parts.shift());
          else ctrl.close();
        },
      });
      init.duplex = 'half';
    } else {
      init.body = body;
    }
  }
  const ac = new AbortController();
  setTimeout(() => ac.abort(new Error('timed out after 10 s')), 10000).unref();
  init.signal = ac.signal;
  const resp = await fetch(c.url, init);
  const hdrs = [];
  resp.headers.forEach((v, k) => hdrs.push([k, v]));
  const read = c.read || 'full';
  if (read === 'sse') {
    const p = sseParser();
    const dec = new TextDecoder();
    for await (const chunk of resp.body) p.push(dec.decode(chunk, { stream: true }));
    return result(c, resp.status, hdrs, Buffer.alloc(0), { events: p.events, decoded: true });
  }
  if (read === 'hangup') {
    const reader = resp.body.getReader();
    const { value } = await reader.read();
    ac.abort();
    return result(c, resp.status, hdrs, (value || Buffer.alloc(0)).subarray(0, c.hangup_after || 1), { decoded: true });
  }
  const buf = Buffer.from(await resp.arrayBuffer());
  return result(c, resp.status, hdrs, buf, { decoded: true });
}

function runHTTP(c) {
  return new Promise((resolve) => {
    const u = new URL(c.url);
    const body = bodyOf(c);
    const headers = ['Host', u.host];
    for (const [k, v] of c.headers || []) headers.push(k, v);
    const chunked = body && c.chunks;
    if (body && !chunked) headers.push('Content-Length', String(body.length));
    if (c.expect) headers.push('Expect', '100-continue');
    let continues = 0;
    let settled = false;
    const finish = (r) => {
      if (!settled) {
        settled = true;
        resolve(r);
      }
    };
    // The raw request target: new URL() would normalise it.
    const target = c.url.slice(c.url.indexOf('/', c.url.indexOf('//') + 2));
    const req = http.request({ host: u.hostname, port: u.port, method: c.method, path: target, headers, agent });
    req.setTimeout(10000, () => req.destroy(new Error('timed out after 10 s')));
    req.on('error', (e) => finish(result(c, 0, [], Buffer.alloc(0), { error: String(e), continues })));
    const send = () => {
      if (!body) return req.end();
      if (chunked) {
        for (const part of chunksOf(c, body)) req.write(part);
        return req.end();
      }
      req.end(body);
    };
    if (c.expect && body) {
      // Node's documented pattern: send the body when the server says 100 Continue.
      req.on('continue', () => {
        continues++;
        req.end(body);
      });
      req.flushHeaders();
    } else {
      send();
    }
    req.on('response', (res) => {
      const hdrs = [];
      for (let i = 0; i < res.rawHeaders.length; i += 2) hdrs.push([res.rawHeaders[i].toLowerCase(), res.rawHeaders[i + 1]]);
      const read = c.read || 'full';
      const parts = [];
      const p = sseParser();
      res.on('data', (d) => {
        if (read === 'sse') p.push(d.toString('utf8'));
        else parts.push(d);
        if (read === 'hangup') {
          req.destroy();
          finish(result(c, res.statusCode, hdrs, Buffer.concat(parts).subarray(0, c.hangup_after || 1), { continues }));
        }
      });
      res.on('end', () => finish(result(c, res.statusCode, hdrs, Buffer.concat(parts), { continues, events: p.events })));
      res.on('error', (e) => finish(result(c, res.statusCode, hdrs, Buffer.concat(parts), { error: String(e), continues })));
    });
  });
}

// An exception thrown outside a request's promise (as Node's http throws write-after-end) ends
// the process; say which case it hit first.
let current = null;
process.on('uncaughtException', (e) => {
  if (current) console.log(JSON.stringify({ id: current.id, status: 0, headers: [], body_b64: '', error: 'uncaught: ' + String(e) }));
  process.exit(3);
});

for (const c of cases) {
  current = c;
  let r;
  const start = Date.now();
  try {
    r = mode === 'fetch' ? await runFetch(c) : await runHTTP(c);
  } catch (e) {
    r = result(c, 0, [], Buffer.alloc(0), { error: String(e && e.cause ? e.cause : e) });
  }
  r.ms = Date.now() - start;
  console.log(JSON.stringify(r));
}
agent.destroy();
