// The vision-feature cache of `pvc serve`: a chat UI sends the same image with every turn, and each
// time the vision encoder would run again. The visual tokens of a media part are kept under a key of
// its bytes (SHA-256) and everything that shapes them: the kind, max_num or num_frames, the input
// size and PVC's data flag (an image alone or among several is repeated differently). Bounded in
// bytes, least recently used first out; hits and misses are counted (GET /metrics).
import * as tf from '@tensorflow/tfjs';
import { createHash } from 'crypto';
import { MediaSource } from './media';

export interface CachedFeatures {
  /** The part's visual tokens [tokens, D] (kept by the cache: clone to hold them beyond its next put). */
  tokens: tf.Tensor2D;
  /** The part's numPatchesList entries: an image's tiles, or one per video frame. */
  tiles: number[];
}

export class FeatureCache {
  private readonly entries = new Map<string, CachedFeatures & { bytes: number }>();
  private held = 0;
  hits = 0;
  misses = 0;

  constructor(readonly maxBytes: number) {}

  get bytes(): number {
    return this.held;
  }

  get size(): number {
    return this.entries.size;
  }

  /** The entry, now the most recently used; counts a hit or a miss. */
  get(key: string): CachedFeatures | undefined {
    const entry = this.entries.get(key);
    if (entry === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.entries.delete(key);
    this.entries.set(key, entry);
    return entry;
  }

  /** Keeps a copy of `tokens` (the caller keeps its own), evicting the least recently used beyond maxBytes. */
  put(key: string, tokens: tf.Tensor2D, tiles: number[]): void {
    const bytes = tokens.size * 4;
    if (bytes > this.maxBytes || this.entries.has(key)) return;
    this.entries.set(key, { tokens: tf.keep(tokens.clone()), tiles: [...tiles], bytes });
    this.held += bytes;
    for (const [k, entry] of this.entries) {
      if (this.held <= this.maxBytes) break;
      this.entries.delete(k);
      entry.tokens.dispose();
      this.held -= entry.bytes;
    }
  }

  /** Drops every entry (the counts stay). */
  clear(): void {
    for (const entry of this.entries.values()) entry.tokens.dispose();
    this.entries.clear();
    this.held = 0;
  }
}

/** The cache key of a media part: its bytes' SHA-256 (a video file read through its descriptor) and what shapes its tokens. */
export async function featureKey(m: MediaSource, inputSize: number, dataFlag: number): Promise<string> {
  const hash = createHash('sha256');
  if (m.bytes) hash.update(m.bytes);
  else if (m.file) {
    // Positional reads: the descriptor's offset stays where ffmpeg expects it.
    const chunk = Buffer.allocUnsafe(1 << 20);
    for (let position = 0; ;) {
      const { bytesRead } = await m.file.read(chunk, 0, chunk.length, position);
      if (bytesRead === 0) break;
      hash.update(chunk.subarray(0, bytesRead));
      position += bytesRead;
    }
  }
  const shape = m.kind === 'image' ? `max_num=${m.maxNum}` : `num_frames=${m.numFrames}`;
  return `${m.kind}:${hash.digest('hex')}:${shape}:size=${inputSize}:flag=${dataFlag}`;
}
