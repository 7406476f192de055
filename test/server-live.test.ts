// Live video sessions over HTTP (pvc serve, src/server/live.ts), on tiny-pvc: frames posted as image
// bytes, questions asked through the official openai client with the session as its baseURL, answers
// equal to model.chat on the same frames (data flag 3, streamed and not); frames a slow model cannot
// take are dropped and counted; every error in OpenAI's shape; sessions freed on delete and timeout.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import OpenAI from 'openai';
import * as path from 'path';
import { withImagePlaceholders } from '../src/chat/prompt';
import { loadImage } from '../src/preprocess/image';
import { PVCModel } from '../src/pvc_model';
import { ChatServer } from '../src/server/server';
import { convertFixture } from './helpers';

const SCENES = path.join(__dirname, 'fixtures', 'scenes-eval', 'images');
const FRAMES = Array.from({ length: 8 }, (_, i) => path.join(SCENES, `video-000-${i + 1}.png`));
const QUESTION = 'Which shape disappears?';
const MAX = 12;

let dir: string;
let model: PVCModel;
let server: ChatServer;
let baseline: number;

beforeAll(async () => {
  dir = convertFixture('tiny-pvc');
  model = await PVCModel.load(dir, { backend: 'wasm' });
  server = await ChatServer.start({ model, modelName: 'tiny-pvc', port: 0, limits: { maxLiveSessions: 2, maxQueue: 4 } });
  await model.chat(null, 'Warm up.', { maxNewTokens: 2 });
  baseline = tf.memory().numTensors;
});

afterAll(async () => {
  await server?.close();
  model?.dispose();
  if (dir) fs.rmSync(path.dirname(dir), { recursive: true, force: true });
});

afterEach(async () => {
  // Every session made by a test is deleted by it: nothing is left, no tensor outlives it.
  expect(((await (await fetch(`${server.url}/health`)).json()) as Json).live_sessions).toBe(0);
  expect(tf.memory().numTensors).toBe(baseline);
});

type Json = Record<string, unknown>;
async function call(
  method: string,
  route: string,
  body?: Buffer | Json,
  type = 'application/json',
  signal?: AbortSignal,
): Promise<{ status: number; body: Json }> {
  const res = await fetch(`${server.url}${route}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': Buffer.isBuffer(body) ? 'image/png' : type },
    body: body === undefined ? undefined : Buffer.isBuffer(body) ? new Uint8Array(body) : JSON.stringify(body),
    signal,
  });
  return { status: res.status, body: (await res.json()) as Json };
}
const create = async (body: Json = {}) => (await call('POST', '/v1/live/sessions', body)).body.id as string;
const postFrame = (id: string, file: string, signal?: AbortSignal) =>
  call('POST', `/v1/live/sessions/${id}/frames`, fs.readFileSync(file), 'image/png', signal);
const remove = (id: string) => call('DELETE', `/v1/live/sessions/${id}`);
const clientFor = (id: string) => new OpenAI({ baseURL: `${server.url}/v1/live/sessions/${id}`, apiKey: 'none', maxRetries: 0 });

/** model.chat on the first t frames, as the server asks it (data flag 3, message text as plain text). */
async function chatOn(t: number, question = QUESTION) {
  const frames = [];
  for (const f of FRAMES.slice(0, t)) frames.push((await loadImage(f, { inputSize: model.config.image_size, maxNum: 1 })).pixelValues);
  const pixels = tf.concat(frames) as tf.Tensor4D;
  tf.dispose(frames);
  const prompt = withImagePlaceholders(question, t, 'video');
  const options = { numPatchesList: new Array<number>(t).fill(1), dataFlag: 3 as const, plainText: true };
  try {
    const ids = await model.chatIds(pixels, prompt, { maxNewTokens: MAX }, options);
    return { ...ids, answer: await model.chat(pixels, prompt, { maxNewTokens: MAX }, options) };
  } finally {
    pixels.dispose();
  }
}

test("frames posted one by one, a question after each through the openai client: chat()'s answer on those frames, streamed and not, with its usage", async () => {
  const id = await create();
  try {
    const client = clientFor(id);
    for (let t = 1; t <= 4; t++) {
      const added = await postFrame(id, FRAMES[t - 1]);
      expect(added).toEqual({ status: 200, body: { object: 'live.frame', added: true, frames: t, dropped: 0, positions: expect.any(Number) } });
      const want = await chatOn(t);
      const answer = await client.chat.completions.create({ model: 'tiny-pvc', messages: [{ role: 'user', content: QUESTION }], max_tokens: MAX });
      expect(answer.choices[0].message.content).toBe(want.answer);
      expect(answer.usage).toMatchObject({ prompt_tokens: want.inputIds.length, completion_tokens: want.outputIds.length });
      const stream = await client.chat.completions.create({
        model: 'tiny-pvc',
        messages: [{ role: 'user', content: QUESTION }],
        max_tokens: MAX,
        stream: true,
      });
      let text = '';
      for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
      expect(text).toBe(answer.choices[0].message.content);
    }
    const state = (await call('GET', `/v1/live/sessions/${id}`)).body;
    expect(state).toMatchObject({ id, object: 'live.session', frames: 4, max_frames: 256, dropped: 0, frame_waiting: false });
    expect(state.expires_in).toBeGreaterThan(0);
  } finally {
    expect((await remove(id)).body).toEqual({ id, object: 'live.session.deleted', deleted: true });
  }
  const gone = await call('GET', `/v1/live/sessions/${id}`);
  expect(gone).toMatchObject({ status: 404, body: { error: { code: 'session_not_found', param: 'session' } } });
  expect((await postFrame(id, FRAMES[0])).status).toBe(404);
});

test('a client posting frames faster than the model: the frame waiting is replaced by the newer one, answered added: false and counted', async () => {
  const id = await create();
  const hold = new AbortController();
  const release = await server.queue.acquire(hold.signal); // the model is busy with another request
  try {
    const state = async () => (await call('GET', `/v1/live/sessions/${id}`)).body;
    const waitFor = async (cond: (s: Json) => boolean) => {
      for (let i = 0; i < 500 && !cond(await state()); i++) await new Promise((r) => setTimeout(r, 10));
    };
    const first = postFrame(id, FRAMES[0]);
    await waitFor((s) => s.frame_waiting === true);
    const second = postFrame(id, FRAMES[1]);
    expect(await first).toEqual({ status: 200, body: { object: 'live.frame', added: false, frames: 0, dropped: 1, positions: 0 } });
    const third = postFrame(id, FRAMES[2]);
    expect((await second).body).toMatchObject({ added: false, dropped: 2 });
    await waitFor((s) => s.frame_waiting === true);
    // A client that leaves while its frame waits takes it back: not a drop.
    const leaving = new AbortController();
    const fourth = postFrame(id, FRAMES[3], leaving.signal);
    expect((await third).body).toMatchObject({ added: false, dropped: 3 });
    leaving.abort();
    await expect(fourth).rejects.toThrow();
    await waitFor((s) => s.frame_waiting === false);
    const fifth = postFrame(id, FRAMES[4]);
    await waitFor((s) => s.frame_waiting === true);
    release();
    expect((await fifth).body).toMatchObject({ added: true, frames: 1, dropped: 3 });
    expect(await state()).toMatchObject({ frames: 1, dropped: 3, frame_waiting: false });
    // A frame that replaces the waiting one keeps its place in the queue: it is added before a request
    // that queued after the first one (a stream of frames is not starved by other requests).
    const busy = await server.queue.acquire(hold.signal);
    const sixth = postFrame(id, FRAMES[5]);
    await waitFor((s) => s.frame_waiting === true);
    let framesWhenOtherRan: unknown;
    const other = server.queue.acquire(hold.signal).then(async (done) => {
      framesWhenOtherRan = (await state()).frames;
      done();
    });
    const seventh = postFrame(id, FRAMES[6]);
    expect((await sixth).body).toMatchObject({ added: false, dropped: 4 });
    busy();
    expect((await seventh).body).toMatchObject({ added: true, frames: 2, dropped: 4 });
    await other;
    expect(framesWhenOtherRan).toBe(2);
  } finally {
    release();
    await remove(id);
  }
});

test('errors in OpenAI shape: sessions, frames, questions, limits', async () => {
  const error = (r: { status: number; body: Json }) => [r.status, (r.body.error as Json)?.code];
  expect(error(await call('GET', '/v1/live/sessions/live-nope'))).toEqual([404, 'session_not_found']);
  expect(error(await call('POST', '/v1/live/sessions', { max_frames: 0 }))).toEqual([400, null]);
  expect(error(await call('POST', '/v1/live/sessions', { colour: 'red' }))).toEqual([400, 'unknown_field']);
  expect(error(await call('POST', '/v1/live/sessions', { model: 'other' }))).toEqual([404, 'model_not_found']);
  expect(error(await call('PUT', '/v1/live/sessions'))).toEqual([405, 'method_not_allowed']);
  const id = await create({ max_frames: 2, system: 'You watch shapes.' });
  const other = await create();
  try {
    expect(error(await call('POST', '/v1/live/sessions'))).toEqual([429, 'too_many_sessions']);
    const ask = (body: Json) => call('POST', `/v1/live/sessions/${id}/chat/completions`, body);
    const question = { model: 'tiny-pvc', messages: [{ role: 'user', content: QUESTION }], max_tokens: 4 };
    expect(error(await ask(question))).toEqual([400, 'invalid_request']); // no frame yet
    expect(error(await call('POST', `/v1/live/sessions/${id}/frames`, { image: 'x' }))).toEqual([400, 'invalid_image']);
    expect(error(await call('POST', `/v1/live/sessions/${id}/frames`, Buffer.from('not an image')))).toEqual([400, 'invalid_image']);
    await postFrame(id, FRAMES[0]);
    await postFrame(id, FRAMES[1]);
    expect(error(await postFrame(id, FRAMES[2]))).toEqual([400, 'max_frames_reached']);
    const image = { type: 'image_url', image_url: { url: `data:image/png;base64,${fs.readFileSync(FRAMES[0]).toString('base64')}` } };
    expect(error(await ask({ ...question, messages: [{ role: 'user', content: [image] }] }))).toEqual([400, null]);
    expect(error(await ask({ ...question, messages: [{ role: 'system', content: 'x' }, ...question.messages] }))).toEqual([400, null]);
    const forged = await ask({ ...question, messages: [{ role: 'user', content: 'Frame1: <image>?' }] });
    expect([forged.status, (forged.body.error as Json).message]).toEqual([400, expect.stringContaining('<image>')]);
    expect(error(await ask({ ...question, max_tokens: 1e6 }))).toEqual([400, null]);
    expect((await ask(question)).status).toBe(200);
  } finally {
    await remove(id);
    await remove(other);
  }
});

test('the context: a frame past --max-model-len is a 400 naming it, and the session keeps its frames; an idle session is freed', async () => {
  // 164 positions, 64 of them kept for answers: frames up to 100.
  const small = await ChatServer.start({ model, port: 0, maxModelLen: 164, limits: { liveSessionIdleMs: 300 } });
  try {
    const url = small.url;
    const id = ((await (await fetch(`${url}/v1/live/sessions`, { method: 'POST' })).json()) as Json).id;
    const post = async () => {
      const res = await fetch(`${url}/v1/live/sessions/${id}/frames`, {
        method: 'POST',
        headers: { 'content-type': 'image/png' },
        body: fs.readFileSync(FRAMES[0]),
      });
      return { status: res.status, body: (await res.json()) as { error: Json } };
    };
    let last = await post();
    for (let i = 0; i < 20 && last.status === 200; i++) last = await post();
    expect(last).toMatchObject({ status: 400, body: { error: { code: 'context_length_exceeded', param: 'body' } } });
    expect(last.body.error.message as string).toMatch(
      /frame 4 would take the prompt to \d+ positions, past the session's maxPositions 100 \(--max-model-len less 64 positions kept for answers\)/,
    );
    const state = (await (await fetch(`${url}/v1/live/sessions/${id}`)).json()) as Json;
    expect(state).toMatchObject({ frames: 3, max_positions: 100 });
    // The full session still answers: without max_tokens the answer takes what the context leaves.
    const ask = (extra: Json) =>
      fetch(`${url}/v1/live/sessions/${id}/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: small.modelName, messages: [{ role: 'user', content: QUESTION }], ...extra }),
      });
    const answered = (await (await ask({})).json()) as { usage: { prompt_tokens: number; completion_tokens: number } };
    expect(answered.usage.prompt_tokens).toBeGreaterThan(state.positions as number);
    expect(answered.usage.prompt_tokens + answered.usage.completion_tokens).toBeLessThanOrEqual(164);
    const refused = await ask({ max_tokens: 100 });
    expect(refused.status).toBe(400);
    expect(((await refused.json()) as { error: Json }).error).toMatchObject({ code: 'context_length_exceeded' });
    // Every request restarts the idle timer (this GET included); none for 600 ms frees it.
    await new Promise((r) => setTimeout(r, 600));
    expect((await fetch(`${url}/v1/live/sessions/${id}`)).status).toBe(404);
    expect(((await (await fetch(`${url}/health`)).json()) as Json).live_sessions).toBe(0);
  } finally {
    await small.close();
  }
});
