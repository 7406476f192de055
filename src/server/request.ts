// A chat completion request, validated field by field: anything unknown, of the wrong type or out of
// range is a 400 that names the field (messages[2].content[0].image_url.url, max_tokens, ...).
//
// The conversation becomes upstream's chat() arguments: an optional system message (replacing the
// template's), then user / assistant turns alternating and ending with a user turn: the last is the
// question, the earlier pairs the history; a last assistant message is the start of the answer, which
// the model continues (a prefill, as VLMEvalKit's MVBench prompt "Best option:(" needs). Each user
// turn's images (or a video's frames) are written in front of its text as upstream's examples do
// ("<image>\n" for one image, "Image-1: <image>\n..." for several, "Frame1: <image>\n..." for a
// video), unless the text places them itself with one <image> per image or frame (as upstream's chat()
// takes them, and VLMEvalKit writes them); the images of every turn stay in the prompt at their turn,
// as upstream's multi-round chat() keeps them (history questions keep their <image>).
//
// `images_as_video` (or `pvc serve --images-as-video`): the request's images are one video's frames,
// one tile each, PVC's video path (data flag 3), as the evaluation harnesses send a video (lmms-eval's
// openai model and VLMEvalKit both decode it on the client into image_url frames).
import { withImagePlaceholders } from '../chat/prompt';
import { IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN } from '../chat/template';
import { History } from '../chat/template';
import { badRequest } from './errors';
import { ServerLimits } from './limits';
import { closeMedia, MediaKind, MediaSource, resolveMedia } from './media';

export interface ChatRequest {
  model: string;
  systemMessage?: string;
  history: History;
  question: string;
  media: MediaSource[];
  /** Generation options for PVCModel (camelCase keys). */
  generation: Record<string, unknown>;
  maxTokens: number;
  stream: boolean;
  includeUsage: boolean;
  /** The start of the answer (a last assistant message): the model continues it; the reply is what follows. */
  answerPrefix?: string;
  /** The images are one video's frames (images_as_video). */
  imagesAsVideo: boolean;
}

const TOP_LEVEL = new Set([
  'model',
  'messages',
  'max_tokens',
  'max_completion_tokens',
  'temperature',
  'top_p',
  'seed',
  'stop',
  'n',
  'stream',
  'stream_options',
  'top_k',
  'repetition_penalty',
  'images_as_video',
  // OpenAI's, accepted where they ask nothing this server does not do (checkOpenAIFields).
  'user',
  'metadata',
  'store',
  'logprobs',
  'parallel_tool_calls',
  'service_tier',
  'presence_penalty',
  'frequency_penalty',
  'response_format',
]);

/**
 * OpenAI fields that change nothing here, checked for their type; those that would ask for what the
 * server does not do (log probabilities, penalties other than 0, a JSON response format) are refused
 * naming the field. Nothing is stored whatever `store` says.
 */
function checkOpenAIFields(body: Json): void {
  const given = (k: string) => body[k] !== undefined && body[k] !== null;
  if (given('user') && typeof body.user !== 'string') throw badRequest('user', 'expected a string');
  for (const k of ['store', 'parallel_tool_calls', 'logprobs']) if (given(k) && typeof body[k] !== 'boolean') throw badRequest(k, 'expected true or false');
  if (body.logprobs === true) throw badRequest('logprobs', 'log probabilities are not supported (logprobs: false only)', 'unsupported_value');
  if (given('service_tier') && !['auto', 'default'].includes(body.service_tier as string))
    throw badRequest('service_tier', `${show(body.service_tier)} is not supported (auto, default)`, 'unsupported_value');
  if (given('metadata')) {
    const m = body.metadata;
    if (!isObject(m) || Object.keys(m).length > 16) throw badRequest('metadata', 'expected an object of at most 16 string values');
    for (const [k, v] of Object.entries(m)) {
      if (k.length > 64 || typeof v !== 'string' || v.length > 512)
        throw badRequest(`metadata.${key(k)}`, 'expected a key of at most 64 characters with a string value of at most 512');
    }
  }
  for (const k of ['presence_penalty', 'frequency_penalty']) {
    if (!given(k)) continue;
    if (typeof body[k] !== 'number') throw badRequest(k, 'expected a number');
    if (body[k] !== 0) throw badRequest(k, `${show(body[k])}: only 0 is supported (repetition_penalty is)`, 'unsupported_value');
  }
  if (given('response_format')) {
    const f = body.response_format;
    if (!isObject(f)) throw badRequest('response_format', 'expected an object');
    checkKeys(f, ['type'], 'response_format');
    if (f.type !== 'text') throw badRequest('response_format.type', `${show(f.type)} is not supported (text only)`, 'unsupported_value');
  }
}

// Text that would be read as the template's image markup is not the client's to write.
const RESERVED = [IMAGE_PLACEHOLDER, IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN];

type Json = Record<string, unknown>;

/** A client's value, bounded, for an error message. */
export function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object' && v !== null) return 'an object';
  return String(v);
}

/** A client's key, bounded, as a field name. */
const key = (k: string) => (k.length > 64 ? `${k.slice(0, 64)}...` : k);

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

function checkKeys(obj: Json, allowed: string[], where: string): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) throw badRequest(where ? `${where}.${key(k)}` : key(k), `unknown field (accepted here: ${allowed.join(', ')})`, 'unknown_field');
  }
}

function number(body: Json, name: string, check: (v: number) => boolean, expected: string): number | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) throw badRequest(name, `${show(v)} is not ${expected}`);
  return v;
}

/** A text part; `<image>` placeholders only where `images` (a user message, whose count content() checks). */
function text(v: unknown, param: string, images = false): string {
  if (typeof v !== 'string') throw badRequest(param, 'expected a string');
  const reserved = RESERVED.find((r) => v.includes(r) && !(images && r === IMAGE_PLACEHOLDER));
  if (reserved !== undefined) throw badRequest(param, `the text contains '${reserved}', which is reserved for images (send images as image_url parts)`);
  return v;
}

interface Turn {
  role: 'user' | 'assistant';
  text: string;
}

/** A message's content: a string or parts; media parts collected into `media` (user messages only). */
async function content(
  message: Json,
  param: string,
  role: string,
  media: MediaSource[],
  root: string | null,
  limits: ServerLimits,
  maxDynamicPatch: number,
  imagesAsVideo: boolean,
): Promise<string> {
  const c = message.content;
  if (typeof c === 'string') return text(c, `${param}.content`);
  if (!Array.isArray(c)) throw badRequest(`${param}.content`, 'expected a string or an array of content parts');
  const texts: string[] = [];
  const kinds: MediaKind[] = [];
  for (const [i, part] of c.entries()) {
    const p = `${param}.content[${i}]`;
    if (!isObject(part)) throw badRequest(p, 'expected a content part object');
    if (part.type === 'text') {
      checkKeys(part, ['type', 'text'], p);
      texts.push(text(part.text, `${p}.text`, role === 'user'));
      continue;
    }
    if (part.type !== 'image_url' && part.type !== 'video_url')
      throw badRequest(`${p}.type`, `${show(part.type)} is not a supported part type (text, image_url, video_url)`);
    if (role !== 'user') throw badRequest(p, `${role} messages carry text only`);
    const kind: MediaKind = part.type === 'image_url' ? 'image' : 'video';
    checkKeys(part, ['type', part.type], p);
    const inner = part[part.type];
    const q = `${p}.${part.type}`;
    if (!isObject(inner)) throw badRequest(q, 'expected an object with a url');
    // detail is OpenAI's (ignored: tiles follow max_num); max_num and num_frames are ours, max_dynamic_patch
    // lmdeploy's name for max_num (VLMEvalKit sends it).
    checkKeys(inner, kind === 'image' ? ['url', 'detail', 'max_num', 'max_dynamic_patch'] : ['url', 'num_frames'], q);
    if (typeof inner.url !== 'string' || inner.url === '') throw badRequest(`${q}.url`, 'expected a non-empty string');
    if (media.length >= limits.maxMediaParts) throw badRequest(q, `more than ${limits.maxMediaParts} images or videos in one request`);
    const source: MediaSource = { kind, param: q, ...(await resolveMedia(inner.url, kind, `${q}.url`, root, limits)) };
    media.push(source); // at once: its file is closed (closeMedia) whatever comes next
    if (kind === 'image') {
      const field = inner.max_num !== undefined || inner.max_dynamic_patch === undefined ? 'max_num' : 'max_dynamic_patch';
      const maxNum = inner[field] ?? maxDynamicPatch;
      if (!Number.isInteger(maxNum) || (maxNum as number) < 1 || (maxNum as number) > limits.maxTilesPerImage) {
        throw badRequest(`${q}.${field}`, `${show(maxNum)} is not an integer from 1 to ${limits.maxTilesPerImage}`);
      }
      if (inner.max_num !== undefined && inner.max_dynamic_patch !== undefined && inner.max_num !== inner.max_dynamic_patch)
        throw badRequest(`${q}.max_dynamic_patch`, `differs from max_num (${show(inner.max_num)}): give one of them`);
      // A video's frames are one tile each, as load_video's.
      source.maxNum = imagesAsVideo ? 1 : (maxNum as number);
    } else {
      const frames = inner.num_frames ?? limits.defaultFrames;
      if (!Number.isInteger(frames) || (frames as number) < 1 || (frames as number) > limits.maxFrames) {
        throw badRequest(`${q}.num_frames`, `${show(frames)} is not an integer from 1 to ${limits.maxFrames}`);
      }
      source.numFrames = frames as number;
    }
    kinds.push(kind);
  }
  const question = texts.join('\n');
  if (kinds.includes('video') && kinds.length > 1) throw badRequest(`${param}.content`, 'a message carries either images or one video');
  // load_video returns exactly num_frames frames (repeating some in a short clip), one tile each.
  const slots = kinds[0] === 'video' ? media[media.length - 1].numFrames! : kinds.length;
  const placed = question.split(IMAGE_PLACEHOLDER).length - 1;
  if (placed > 0 && placed !== slots) {
    const what = kinds[0] === 'video' ? `the video's ${slots} frames (num_frames)` : `its ${slots} image parts`;
    throw badRequest(`${param}.content`, `the text has ${placed} ${IMAGE_PLACEHOLDER} placeholders for ${what}: one each, or none`);
  }
  if (kinds.length === 0 || placed > 0) return question;
  if (kinds[0] === 'image' && kinds.length === 1 && !imagesAsVideo) return `${IMAGE_PLACEHOLDER}\n${question}`;
  return withImagePlaceholders(question, slots, kinds[0] === 'video' || imagesAsVideo ? 'video' : 'images');
}

/**
 * Validates a parsed JSON body and resolves its media sources (bytes read, paths checked; nothing
 * decoded yet; video files open: closeMedia closes them, as it does here when the request is refused).
 * `root`: realpath of --allowed-local-media-path or null.
 */
export async function parseChatRequest(
  body: unknown,
  root: string | null,
  limits: ServerLimits,
  maxDynamicPatch: number,
  imagesAsVideo = false,
): Promise<ChatRequest> {
  const media: MediaSource[] = [];
  try {
    return await parse(body, root, limits, maxDynamicPatch, imagesAsVideo, media);
  } catch (e) {
    await closeMedia(media);
    throw e;
  }
}

async function parse(
  body: unknown,
  root: string | null,
  limits: ServerLimits,
  maxDynamicPatch: number,
  imagesAsVideoDefault: boolean,
  media: MediaSource[],
): Promise<ChatRequest> {
  if (!isObject(body)) throw badRequest(null, 'the request body must be a JSON object');
  for (const k of Object.keys(body)) if (!TOP_LEVEL.has(k)) throw badRequest(key(k), `unknown field (accepted: ${[...TOP_LEVEL].join(', ')})`, 'unknown_field');
  if (typeof body.model !== 'string') throw badRequest('model', 'expected the model name as a string');
  checkOpenAIFields(body);
  if (body.n !== undefined && body.n !== null && body.n !== 1) throw badRequest('n', `${show(body.n)}: only n = 1 is supported`);
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== 'boolean') throw badRequest('stream', 'expected true or false');
  const stream = body.stream === true;
  if (body.images_as_video !== undefined && body.images_as_video !== null && typeof body.images_as_video !== 'boolean')
    throw badRequest('images_as_video', 'expected true or false');
  const imagesAsVideo = typeof body.images_as_video === 'boolean' ? body.images_as_video : imagesAsVideoDefault;
  let includeUsage = false;
  if (body.stream_options !== undefined && body.stream_options !== null) {
    if (!stream) throw badRequest('stream_options', 'only with stream: true');
    if (!isObject(body.stream_options)) throw badRequest('stream_options', 'expected an object');
    checkKeys(body.stream_options, ['include_usage'], 'stream_options');
    const u = body.stream_options.include_usage;
    if (u !== undefined && typeof u !== 'boolean') throw badRequest('stream_options.include_usage', 'expected true or false');
    includeUsage = u === true;
  }

  const maxTokens =
    number(body, 'max_completion_tokens', (v) => Number.isInteger(v) && v >= 1 && v <= limits.maxTokens, `an integer from 1 to ${limits.maxTokens}`) ??
    number(body, 'max_tokens', (v) => Number.isInteger(v) && v >= 1 && v <= limits.maxTokens, `an integer from 1 to ${limits.maxTokens}`) ??
    limits.defaultMaxTokens;
  const temperature = number(body, 'temperature', (v) => v >= 0 && v <= 2, 'a number from 0 to 2');
  const topP = number(body, 'top_p', (v) => v > 0 && v <= 1, 'a number in (0, 1]');
  const topK = number(body, 'top_k', (v) => Number.isInteger(v) && v >= 0, 'a non-negative integer');
  const repetitionPenalty = number(body, 'repetition_penalty', (v) => v > 0, 'a positive number');
  const seed = number(body, 'seed', (v) => Number.isSafeInteger(v), 'an integer');
  // Greedy unless a temperature above 0 asks for sampling (upstream's examples decode greedily).
  const doSample = temperature !== undefined && temperature > 0;
  const generation: Record<string, unknown> = { maxNewTokens: maxTokens, doSample };
  if (doSample) {
    generation.temperature = temperature;
    // Without a seed, each request samples differently (the sampler's own default seed is fixed).
    generation.seed = seed ?? Math.floor(Math.random() * 2 ** 31);
    if (topP !== undefined) generation.topP = topP;
    if (topK !== undefined) generation.topK = topK;
  }
  if (repetitionPenalty !== undefined) generation.repetitionPenalty = repetitionPenalty;
  // OpenAI's API takes up to 4 stop strings; each is checked with the other generation options when the
  // server resolves them (a string of 1 to 256 characters: generation/stop.ts), a 400 naming `stop`.
  if (body.stop !== undefined && body.stop !== null) {
    if (Array.isArray(body.stop) && body.stop.length > 4) throw badRequest('stop', `${body.stop.length} stop strings: OpenAI's API takes up to 4`);
    generation.stop = body.stop;
  }

  if (!Array.isArray(body.messages) || body.messages.length === 0) throw badRequest('messages', 'expected a non-empty array of messages');
  if (body.messages.length > limits.maxMessages) throw badRequest('messages', `${body.messages.length} messages, more than the ${limits.maxMessages} accepted`);
  const turns: Turn[] = [];
  let systemMessage: string | undefined;
  for (const [i, message] of body.messages.entries()) {
    const param = `messages[${i}]`;
    if (!isObject(message)) throw badRequest(param, 'expected a message object');
    // name (OpenAI's participant name) is accepted and, as vLLM's templates do, left out of the prompt.
    checkKeys(message, ['role', 'content', 'name'], param);
    if (message.name !== undefined && typeof message.name !== 'string') throw badRequest(`${param}.name`, 'expected a string');
    const role = message.role;
    if (role === 'system' || role === 'developer') {
      if (i !== 0) throw badRequest(`${param}.role`, 'a system message may only come first');
      systemMessage = await content(message, param, role, media, root, limits, maxDynamicPatch, imagesAsVideo);
      continue;
    }
    if (role !== 'user' && role !== 'assistant') throw badRequest(`${param}.role`, `${show(role)} is not a supported role (system, user, assistant)`);
    const expected = turns.length % 2 === 0 ? 'user' : 'assistant';
    if (role !== expected) throw badRequest(`${param}.role`, `expected a ${expected} message here (user and assistant messages alternate, starting with user)`);
    const before = media.length;
    turns.push({ role, text: await content(message, param, role, media, root, limits, maxDynamicPatch, imagesAsVideo) });
    if (imagesAsVideo && media.length > before && before > 0)
      throw badRequest(`${param}.content`, "with images_as_video the images are one video's frames: send them in one message");
  }
  // A last assistant message: the start of the answer, which the model continues.
  const answerPrefix = turns[turns.length - 1]?.role === 'assistant' ? turns.pop()!.text : undefined;
  if (turns.length === 0) throw badRequest('messages', 'the conversation needs a user message');
  const chars = turns.reduce((n, t) => n + t.text.length, (systemMessage?.length ?? 0) + (answerPrefix?.length ?? 0));
  if (chars > limits.maxTextChars)
    throw badRequest('messages', `${chars} characters of text, more than the ${limits.maxTextChars} accepted`, 'context_length_exceeded');
  if (media.filter((m) => m.kind === 'video').length > 0 && media.length > 1) throw badRequest('messages', 'a request carries either images or one video');
  const history: History = [];
  for (let k = 0; k + 1 < turns.length; k += 2) history.push([turns[k].text, turns[k + 1].text]);
  if (imagesAsVideo && media.some((m) => m.kind === 'video'))
    throw badRequest('images_as_video', 'the request has a video_url part: its images are not frames');
  const question = turns[turns.length - 1].text;
  return { model: body.model, systemMessage, history, question, media, generation, maxTokens, stream, includeUsage, answerPrefix, imagesAsVideo };
}
