// Beam search against transformers 4.37.2's generate(num_beams=...) (test/reference/make_beam_fixtures.py):
// on the oracle's own prompt embeddings (single and left-padded batches, eos ids that end hypotheses
// early), and end to end through chat() / batchChat() on tiny-internvl2 (image) and tiny-pvc (video).
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as path from 'path';
import { contextLength } from '../src/config';
import { PVCModel } from '../src/pvc_model';
import { beamSearch } from '../src/generation/beam';
import { resolveGenerationConfig } from '../src/generation/generate';
import { SafetensorsFile } from '../src/io/safetensors';
import { convertFixture, convertWithPositions, FIXTURES, loadReference, PARITY_BACKENDS, PARITY_TOLERANCE, readJson } from './helpers';

interface DirectCase {
  name: string;
  embeds: string;
  attention_mask: number[][];
  eos_token_id: number[];
  generation_config: Record<string, unknown>;
  sequences: number[][];
  scores: number[];
}
interface ChatCase {
  name: string;
  question: string;
  generation_config: Record<string, unknown>;
  sequences: number[][];
  scores: number[];
  answer: string;
  data_flag?: 1 | 2 | 3;
  num_patches_list?: number[];
}
interface BeamDoc {
  chat: ChatCase[];
  batch_chat?: (Omit<ChatCase, 'question' | 'answer'> & { questions: string[]; num_patches_list: number[]; answers: string[] })[];
  direct: DirectCase[];
  /** A chat whose prompt is longer than max_position_embeddings x the rope_scaling factor, on the checkpoint with this max_position_embeddings. */
  long_context?: { max_position_embeddings: number; chat: ChatCase };
}

const BOS = 1;
const PAD = 2;

/** Scores agree to the parity tolerance relative to the largest reference score of the case. */
function expectScores(actual: number[], ref: number[]): void {
  expect(actual).toHaveLength(ref.length);
  const scale = Math.max(...ref.map(Math.abs));
  actual.forEach((a, i) => expect(Math.abs(a - ref[i])).toBeLessThanOrEqual(PARITY_TOLERANCE * scale));
}

// Upstream's rows start with the <s> generate() seeds; ours are the generated ids after it.
const generated = (rows: number[][]) => rows.map((r) => r.slice(1));

describe.each(PARITY_BACKENDS)('beam search on %s', (backend) => {
  describe.each(['tiny-internvl2', 'tiny-pvc'])('%s', (fixture) => {
    let dir: string;
    let model: PVCModel;
    let doc: BeamDoc;
    let embeds: SafetensorsFile;

    beforeAll(async () => {
      dir = convertFixture(fixture);
      model = await PVCModel.load(dir, { backend });
      doc = readJson<BeamDoc>(path.join(FIXTURES, 'reference', 'beam', `${fixture}.json`));
      embeds = SafetensorsFile.open(path.join(FIXTURES, 'reference', 'beam', `${fixture}.safetensors`));
    });
    afterAll(() => {
      embeds.close();
      model.dispose();
      fs.rmSync(path.dirname(dir), { recursive: true, force: true });
    });

    // cpu is slow: it runs a few cases that cover single and batched rows, each early_stopping value and
    // more than one eos; wasm (and tensorflow) run them all.
    const directNames = (all: string[]) => (backend === 'cpu' ? all.filter((n, i) => i % 4 === 2 || n.includes('return4')) : all);
    const allDirect = readJson<BeamDoc>(path.join(FIXTURES, 'reference', 'beam', `${fixture}.json`)).direct.map((c) => c.name);

    test.each(directNames(allDirect))("generate() on the oracle's embeddings: %s", async (name) => {
      const c = doc.direct.find((x) => x.name === name)!;
      const x = tf.tensor3d(embeds.readFloat32(c.embeds), embeds.info(c.embeds).shape as [number, number, number]);
      const config = resolveGenerationConfig(c.generation_config, { eosTokenId: c.eos_token_id, padTokenId: PAD });
      const before = tf.memory().numTensors;
      const out = await beamSearch(model.llm, { embeds: x, attentionMask: c.attention_mask, seenIds: c.attention_mask.map(() => [BOS]) }, config);
      expect(tf.memory().numTensors).toBe(before);
      x.dispose();
      expect(out.sequences).toEqual(generated(c.sequences));
      expectScores(out.scores, c.scores);
    });

    const pixelsOf = (c: ChatCase): tf.Tensor4D => {
      if (fixture === 'tiny-internvl2') {
        const ref = loadReference('tiny-internvl2');
        const all = ref.tensors.readFloat32('pixel_values');
        const shape = ref.tensors.info('pixel_values').shape as [number, number, number, number];
        ref.tensors.close();
        const size = shape[1] * shape[2] * shape[3];
        // chat cases use image A (3 tiles); batch_chat both images
        return c.name.startsWith('batch') ? tf.tensor4d(all, shape) : tf.tensor4d(all.subarray(0, 3 * size), [3, shape[1], shape[2], shape[3]]);
      }
      const ref = loadReference('tiny-pvc');
      const clip = tf.tensor4d(ref.tensors.readFloat32('clip'), ref.tensors.info('clip').shape as [number, number, number, number]);
      ref.tensors.close();
      return clip;
    };

    const chatNames = (all: string[]) => (backend === 'cpu' ? all.slice(4, 6) : all);
    const allChats = readJson<BeamDoc>(path.join(FIXTURES, 'reference', 'beam', `${fixture}.json`)).chat.map((c) => c.name);

    test.each(chatNames(allChats))('chat(): %s', async (name) => {
      const c = doc.chat.find((x) => x.name === name)!;
      const before = tf.memory().numTensors;
      const pixels = pixelsOf(c);
      const options = c.data_flag ? { dataFlag: c.data_flag, numPatchesList: c.num_patches_list } : {};
      const out = await model.chatIds(pixels, c.question, c.generation_config, options);
      expect(out.outputIds).toEqual(generated(c.sequences)[0]);
      expect(out.sequences).toEqual(generated(c.sequences));
      expectScores(out.sequenceScores!, c.scores);
      expect(await model.chat(pixels, c.question, c.generation_config, options)).toBe(c.answer);
      pixels.dispose();
      expect(tf.memory().numTensors).toBe(before);
    });

    if (fixture === 'tiny-internvl2') {
      test("chat() past max_position_embeddings x the rope_scaling factor: upstream's beams (dynamic NTK, nothing refused)", async () => {
        const { max_position_embeddings: positions, chat: c } = doc.long_context!;
        const longDir = convertWithPositions(fixture, positions);
        const fresh = await PVCModel.load(longDir, { backend }); // the oracle's model is fresh too: no NTK state yet
        try {
          const before = tf.memory().numTensors;
          const pixels = pixelsOf(c);
          const out = await fresh.chatIds(pixels, c.question, c.generation_config);
          pixels.dispose();
          expect(out.inputIds.length).toBeGreaterThan(contextLength(fresh.config.llm));
          expect(out.sequences).toEqual(generated(c.sequences));
          expectScores(out.sequenceScores!, c.scores);
          expect(tf.memory().numTensors).toBe(before);
        } finally {
          fresh.dispose();
          fs.rmSync(path.dirname(longDir), { recursive: true, force: true });
        }
      });

      test.each(backend === 'cpu' ? [0] : [0, 1, 2])("batchChat() equals upstream's batch_chat (case %d)", async (i) => {
        const b = doc.batch_chat![i];
        const before = tf.memory().numTensors;
        const pixels = pixelsOf({ name: 'batch' } as ChatCase);
        const answers = await model.batchChat(pixels, b.questions, b.generation_config, { numPatchesList: b.num_patches_list });
        pixels.dispose();
        expect(answers).toEqual(b.answers);
        expect(tf.memory().numTensors).toBe(before);
      });
    }
  });
});
