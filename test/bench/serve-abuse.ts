// `npm run bench:serve -- --abuse`: the hostile requests of issue 30 against a real `pvc serve` process
// (tiny-internvl2, 127.0.0.1), measured from outside: the server's RSS (and its ffmpeg's) sampled from
// /proc every 10 ms, /health asked every 20 ms throughout. Writes bench-results.serve-abuse.json and
// prints a table; exits 1 when a bar is missed:
//   - a 28 KB H.264 clip of 129 frames at 3840x2160 with num_frames 128, sent 5 times: each answered,
//     peak RSS < 1.5 GB above idle, /health p99 < 50 ms meanwhile (also shown split: while the media
//     decode, while the model runs), RSS after each within 10% of its level after the 1st;
//   - a client that leaves a long video decode: its ffmpeg gone within 1 s, the next request answered;
//   - 24 concurrent 40 MB bodies, 16 PNGs of 6000x6000 with max_num 40, 1,000,001 empty messages, a FIFO
//     and a socket in the media root, 50 slow bodies: refused (4xx) without holding /health.
//
//   npx tsx test/bench/serve-bench.ts --abuse [--backend wasm]
import { ChildProcess, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { Worker } from 'worker_threads';
import { convertFixture } from '../helpers';

const ROOT = path.join(__dirname, '..', '..');
const MiB = 1024 * 1024;

const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function ffmpegPath(): string {
  if (spawnSync('ffmpeg', ['-version'], { stdio: 'ignore' }).status === 0) return 'ffmpeg';
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('@ffmpeg-installer/ffmpeg') as { path: string }).path;
}

/** Resident bytes of a process (0 once it is gone). */
function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Child processes of `pid` (its ffmpeg / ffprobe runs). */
/** The server's ffmpeg and ffprobe processes (not tsx's esbuild service, which a thread may start). */
function childrenOf(pid: number): number[] {
  try {
    return fs
      .readdirSync(`/proc/${pid}/task`)
      .flatMap((t) => fs.readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number))
      .filter((child) => /^ff(mpeg|probe)$/.test(path.basename(commandOf(child).split('\0')[0])));
  } catch {
    return [];
  }
}

/** A process's command line, NUL-separated ('' once it is gone). */
function commandOf(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return '';
  }
}

/** The /health prober: a thread of its own, so that the bench's own work (building and sending bodies) does not delay it. */
const PROBER = `
const { parentPort, workerData } = require('worker_threads');
const health = [];
let failures = 0;
let running = true;
parentPort.on('message', () => (running = false));
(async () => {
  while (running) {
    const t = performance.now();
    const at = performance.timeOrigin + t;
    try {
      const r = await fetch(workerData.url + '/health', { signal: AbortSignal.timeout(10000) });
      await r.arrayBuffer();
      if (r.status !== 200) failures++;
    } catch {
      failures++;
    }
    health.push([at, performance.now() - t]);
    await new Promise((r) => setTimeout(r, 20));
  }
  parentPort.postMessage({ health, failures });
})();
`;

const stats = (ms: number[]) => ({
  probes: ms.length,
  p50: +percentile(ms, 50).toFixed(1),
  p99: +percentile(ms, 99).toFixed(1),
  max: +percentile(ms, 100).toFixed(1),
});

/**
 * Samples the server's RSS (and its children's) every 10 ms and /health's latency every 20 ms, until
 * stopped. /health is also split in two: probes sent while the server had a child (ffprobe, ffmpeg: the
 * media being decoded) and after the last one ended (the model running).
 */
function watch(pid: number, url: string) {
  let peak = 0;
  let childPeak = 0;
  let lastChild = 0;
  const sampler = setInterval(() => {
    peak = Math.max(peak, rssOf(pid));
    const children = childrenOf(pid);
    if (children.length > 0) lastChild = performance.timeOrigin + performance.now();
    childPeak = Math.max(
      childPeak,
      children.reduce((s, c) => s + rssOf(c), 0),
    );
  }, 10);
  const prober = new Worker(PROBER, { eval: true, workerData: { url } });
  const probed = new Promise<{ health: [number, number][]; failures: number }>((resolve) => prober.once('message', resolve));
  return async () => {
    clearInterval(sampler);
    prober.postMessage('stop');
    const { health, failures } = await probed;
    await prober.terminate();
    return {
      peakRss: peak,
      ffmpegPeakRss: childPeak,
      health: { ...stats(health.map(([, ms]) => ms)), failures },
      healthWhileDecoding: stats(health.filter(([at]) => at <= lastChild).map(([, ms]) => ms)),
      healthAfterDecoding: stats(health.filter(([at]) => at > lastChild).map(([, ms]) => ms)),
    };
  };
}

async function post(url: string, body: string | Buffer, signal?: AbortSignal): Promise<{ status: number; code?: string; ms: number }> {
  const t = performance.now();
  try {
    const r = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal });
    const json = (await r.json().catch(() => ({}))) as { error?: { code?: string } };
    return { status: r.status, code: json.error?.code, ms: performance.now() - t };
  } catch (e) {
    const cause = (e as Error & { cause?: { code?: string } }).cause?.code;
    return { status: 0, code: `${(e as Error).name}${cause ? ` ${cause}` : ''}`, ms: performance.now() - t };
  }
}

const chat = (content: unknown[], extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: 'tiny', max_tokens: 2, messages: [{ role: 'user', content }], ...extra });
const videoPart = (url: string, frames: number) => ({ type: 'video_url', video_url: { url, num_frames: frames } });

/** Waits until the server has no child process left; milliseconds it took (Infinity past `limitMs`). */
async function childrenGone(pid: number, limitMs: number): Promise<number> {
  const t = performance.now();
  while (childrenOf(pid).length > 0) {
    if (performance.now() - t > limitMs) return Infinity;
    await sleep(5);
  }
  return performance.now() - t;
}

export async function abuseBench(): Promise<number> {
  const backendArg = process.argv.indexOf('--backend');
  const backend = backendArg > 0 ? process.argv[backendArg + 1] : 'wasm';
  const dir = convertFixture('tiny-internvl2');
  const media = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-abuse-'));
  const ffmpeg = ffmpegPath();
  const make = (name: string, args: string[]) => {
    const r = spawnSync(ffmpeg, ['-v', 'error', '-y', ...args, path.join(media, name)]);
    if (r.status !== 0) throw new Error(`ffmpeg ${name}: ${r.stderr}`);
    return path.join(media, name);
  };
  // The issue's clip: 129 flat frames at 4K (28 KB), and a long one at 16x16 (many frames to decode).
  const clip4k = make('4k.mp4', [
    '-f',
    'lavfi',
    '-i',
    'color=c=gray:s=3840x2160:r=30',
    '-frames:v',
    '129',
    '-c:v',
    'libx264',
    '-preset',
    'ultrafast',
    '-pix_fmt',
    'yuv420p',
  ]);
  make('long.mp4', ['-f', 'lavfi', '-i', 'testsrc2=s=16x16:r=1000', '-frames:v', '300000', '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p']);
  spawnSync('mkfifo', [path.join(media, 'fifo.jpg')]);
  const socketServer = net.createServer().listen(path.join(media, 'sock.jpg'));

  const bin = path.join(ROOT, 'src', 'cli', 'pvc.js');
  const args = ['serve', '--model', dir, '--port', '0', '--served-model-name', 'tiny', '--backend', backend, '--allowed-local-media-path', media];
  // Timeouts short enough for the slow clients' case, long enough that 24 bodies of 40 MB sent at once
  // by this one process do not pause past them; no feature cache, so that every 4K request decodes.
  const TIMEOUT_S = 5;
  const flags = ['--body-idle-timeout', String(TIMEOUT_S), '--headers-timeout', String(TIMEOUT_S), '--feature-cache-mb', '0'];
  const server: ChildProcess = spawn(process.execPath, [bin, ...args, ...flags], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const results: Record<string, unknown> = {};
  const bars: { name: string; ok: boolean; value: string }[] = [];
  const bar = (name: string, ok: boolean, value: string) => bars.push({ name, ok, value });
  try {
    for (let t = Date.now(); !stderr.includes('ready'); await sleep(50)) {
      if (Date.now() - t > 120_000 || server.exitCode !== null) throw new Error(`pvc serve did not start:\n${stderr}`);
    }
    const url = /listening on (http:\/\/[^\s]+) /.exec(stderr)![1];
    const pid = server.pid!;
    await post(url, chat([{ type: 'text', text: 'Warm up.' }]));
    await sleep(1000);
    const idle = rssOf(pid);
    results.idleRssMiB = +(idle / MiB).toFixed(1);

    // 1. The 4K clip, three times.
    const runs = [];
    for (let k = 0; k < 5; k++) {
      const stop = watch(pid, url);
      const answer = await post(
        url,
        chat([videoPart(`data:video/mp4;base64,${fs.readFileSync(clip4k).toString('base64')}`, 128), { type: 'text', text: 'What is this?' }]),
      );
      const seen = await stop();
      await sleep(2000);
      runs.push({
        status: answer.status,
        seconds: +(answer.ms / 1000).toFixed(2),
        peakAboveIdleMiB: +((seen.peakRss - idle) / MiB).toFixed(1),
        ffmpegPeakMiB: +(seen.ffmpegPeakRss / MiB).toFixed(1),
        health: seen.health,
        healthWhileDecoding: seen.healthWhileDecoding,
        healthAfterDecoding: seen.healthAfterDecoding,
        rssAfterMiB: +(rssOf(pid) / MiB).toFixed(1),
      });
    }
    results.video4k = { bytes: fs.statSync(clip4k).size, runs };
    const after1 = runs[0].rssAfterMiB;
    bar(
      '4K clip answered (5 x)',
      runs.every((r) => r.status === 200),
      runs.map((r) => `${r.status} in ${r.seconds} s`).join(', '),
    );
    bar(
      'peak RSS < 1.5 GB above idle',
      runs.every((r) => r.peakAboveIdleMiB < 1536),
      runs.map((r) => `${r.peakAboveIdleMiB} MiB`).join(', '),
    );
    bar(
      '/health p99 < 50 ms meanwhile',
      runs.every((r) => r.health.p99 < 50 && r.health.failures === 0),
      runs.map((r) => `${r.health.p99} ms (decoding ${r.healthWhileDecoding.p99}, model ${r.healthAfterDecoding.p99})`).join(', '),
    );
    bar(
      'RSS after within 10% of after the 1st',
      runs.every((r) => Math.abs(r.rssAfterMiB - after1) <= 0.1 * after1),
      runs.map((r) => `${r.rssAfterMiB} MiB`).join(', '),
    );

    // 2. A client that leaves a long decode (300,000 frames at 16x16).
    {
      const controller = new AbortController();
      const request = post(url, chat([videoPart('long.mp4', 8), { type: 'text', text: 'Hi' }]), controller.signal);
      for (let t = Date.now(); childrenOf(pid).length === 0 && Date.now() - t < 10_000;) await sleep(5);
      await sleep(1000);
      const decoding = childrenOf(pid).length > 0;
      controller.abort();
      const goneMs = await childrenGone(pid, 5000);
      const left = childrenOf(pid).map((c) => commandOf(c).replaceAll('\0', ' ').slice(0, 80));
      await request;
      const next = await post(url, chat([{ type: 'text', text: 'Hi' }]));
      results.leavingClient = {
        decodingAtOneSecond: decoding,
        ffmpegGoneMs: +goneMs.toFixed(1),
        childrenLeft: left,
        nextRequest: { status: next.status, ms: +next.ms.toFixed(1) },
      };
      bar(
        'a leaving client stops its ffmpeg within 1 s',
        decoding && goneMs < 1000 && next.status === 200,
        `${goneMs.toFixed(0)} ms; next request ${next.status} in ${next.ms.toFixed(0)} ms`,
      );
    }

    // 3. Refusals that must come cheap, each while /health is watched.
    // Bodies built before the clock starts.
    const bigBody = Buffer.from(chat([{ type: 'text', text: 'x'.repeat(40 * MiB) }]));
    const png = await sharp({ create: { width: 6000, height: 6000, channels: 3, background: '#808080' } })
      .png()
      .toBuffer();
    const pngPart = { type: 'image_url', image_url: { url: `data:image/png;base64,${png.toString('base64')}`, max_num: 40 } };
    const pngBody = Buffer.from(chat([...Array(16).fill(pngPart), { type: 'text', text: 'Hi' }]));
    const messagesBody = Buffer.from(JSON.stringify({ model: 'tiny', messages: Array(1_000_001).fill({ role: 'user', content: '' }) }));
    const cases: [string, () => Promise<{ status: number; code?: string; ms: number }[]>][] = [
      ['24 concurrent 40 MB bodies', () => Promise.all(Array.from({ length: 24 }, () => post(url, bigBody)))],
      ['16 PNGs of 6000x6000, max_num 40', async () => [await post(url, pngBody)]],
      ['1,000,001 empty messages', async () => [await post(url, messagesBody)]],
      [
        'a FIFO and a socket in the media root',
        async () =>
          Promise.all(
            ['fifo.jpg', 'sock.jpg'].map((f) =>
              post(
                url,
                chat([
                  { type: 'image_url', image_url: { url: f } },
                  { type: 'text', text: 'Hi' },
                ]),
              ),
            ),
          ),
      ],
      [
        `50 slow bodies (cut off after --body-idle-timeout ${TIMEOUT_S})`,
        async () => {
          const { port } = new URL(url);
          return Promise.all(
            Array.from(
              { length: 50 },
              () =>
                new Promise<{ status: number; ms: number }>((resolve) => {
                  const t = performance.now();
                  const socket = net.connect(Number(port), '127.0.0.1', () =>
                    socket.write('POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"model":'),
                  );
                  let reply = '';
                  socket.on('data', (d) => (reply += d.toString()));
                  socket.on('close', () => resolve({ status: Number(/^HTTP\/1\.1 (\d+)/.exec(reply)?.[1] ?? 0), ms: performance.now() - t }));
                  socket.on('error', () => {});
                }),
            ),
          );
        },
      ],
    ];
    const refusals: Record<string, unknown> = {};
    for (const [name, send] of cases) {
      const stop = watch(pid, url);
      const answers = await send();
      const seen = await stop();
      const statuses = Object.entries(
        answers.reduce<Record<string, number>>(
          (m, a) => ((m[`${a.status}${a.code ? ` ${a.code}` : ''}`] = (m[`${a.status}${a.code ? ` ${a.code}` : ''}`] ?? 0) + 1), m),
          {},
        ),
      );
      refusals[name] = {
        statuses: Object.fromEntries(statuses),
        slowestMs: +Math.max(...answers.map((a) => a.ms)).toFixed(1),
        peakAboveIdleMiB: +((seen.peakRss - idle) / MiB).toFixed(1),
        health: seen.health,
      };
      // Refused, and /health kept answering (within 1 s: parsing a 30-40 MB body is one JSON.parse).
      const ok = answers.every((a) => a.status >= 400 && a.status < 500) && seen.health.failures === 0 && seen.health.max < 1000;
      bar(
        name,
        ok,
        `${statuses.map(([s, n]) => `${n} x ${s}`).join(', ')}; slowest ${Math.max(...answers.map((a) => a.ms)).toFixed(0)} ms; /health p99 ${seen.health.p99} ms`,
      );
    }
    results.refusals = refusals;
    results.serverAlive = server.exitCode === null && (await fetch(`${url}/health`)).status === 200;
    bar('the server still answers', results.serverAlive === true, String(results.serverAlive));
  } finally {
    server.kill('SIGTERM');
    socketServer.close();
    await new Promise((r) => server.once('exit', r));
    fs.rmSync(media, { recursive: true, force: true });
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  }
  const out = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version, backend, loadavg: os.loadavg() },
    ...results,
    bars,
  };
  fs.writeFileSync(path.join(ROOT, 'bench-results.serve-abuse.json'), JSON.stringify(out, null, 1) + '\n');
  console.log(JSON.stringify(out, null, 1));
  console.log(`\n| case | measured | bar |\n|---|---|---|\n${bars.map((b) => `| ${b.name} | ${b.value} | ${b.ok ? 'met' : 'MISSED'} |`).join('\n')}`);
  return bars.every((b) => b.ok) ? 0 : 1;
}
