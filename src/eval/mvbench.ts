// MVBench as PVC's evaluation runs it (OpenGVLab/PVC eval/mvbench, read, not copied): the benchmark's
// published layout (json/<task>.json, a list of { video, question, candidates, answer, start?, end? },
// and the videos under the folder each task's table row names), the frames (num_segments sampled over
// the clip or its [start, end], one tile each, data flag 3), the prompt (a "FrameN:<image>" line per
// frame, the instruction, the question and its lettered options, "Only give the best option."), the
// decoding (beam search, 5 beams, up to 1000 tokens, at least 1, no sampling) and the reading of the
// answer (its first word as the option letter).
import * as fs from 'fs';
import * as path from 'path';
import { InputError } from '../errors';
import { getIndex, loadVideo } from '../preprocess/video';
import { loadImage } from '../preprocess/image';
import * as tf from '@tensorflow/tfjs';
import type { EvalProtocol } from './run';

/** How a task's media are stored: a video file, or a folder of JPEG frames (00001.jpg, ... at 3 fps). */
type MediaKind = 'video' | 'frame';

/** MVBench's 20 tasks: the task file, the folder of its videos (under video/), how they are stored, whether items carry start/end. */
export const MVBENCH_TASKS: Record<string, { file: string; folder: string; kind: MediaKind; bound: boolean }> = {
  'Action Sequence': { file: 'action_sequence.json', folder: 'star/Charades_v1_480', kind: 'video', bound: true },
  'Action Prediction': { file: 'action_prediction.json', folder: 'star/Charades_v1_480', kind: 'video', bound: true },
  'Action Antonym': { file: 'action_antonym.json', folder: 'ssv2_video', kind: 'video', bound: false },
  'Fine-grained Action': { file: 'fine_grained_action.json', folder: 'Moments_in_Time_Raw/videos', kind: 'video', bound: false },
  'Unexpected Action': { file: 'unexpected_action.json', folder: 'FunQA_test/test', kind: 'video', bound: false },
  'Object Existence': { file: 'object_existence.json', folder: 'clevrer/video_validation', kind: 'video', bound: false },
  'Object Interaction': { file: 'object_interaction.json', folder: 'star/Charades_v1_480', kind: 'video', bound: true },
  'Object Shuffle': { file: 'object_shuffle.json', folder: 'perception/videos', kind: 'video', bound: false },
  'Moving Direction': { file: 'moving_direction.json', folder: 'clevrer/video_validation', kind: 'video', bound: false },
  'Action Localization': { file: 'action_localization.json', folder: 'sta/sta_video', kind: 'video', bound: true },
  'Scene Transition': { file: 'scene_transition.json', folder: 'scene_qa/video', kind: 'video', bound: false },
  'Action Count': { file: 'action_count.json', folder: 'perception/videos', kind: 'video', bound: false },
  'Moving Count': { file: 'moving_count.json', folder: 'clevrer/video_validation', kind: 'video', bound: false },
  'Moving Attribute': { file: 'moving_attribute.json', folder: 'clevrer/video_validation', kind: 'video', bound: false },
  'State Change': { file: 'state_change.json', folder: 'perception/videos', kind: 'video', bound: false },
  'Fine-grained Pose': { file: 'fine_grained_pose.json', folder: 'nturgbd', kind: 'video', bound: false },
  'Character Order': { file: 'character_order.json', folder: 'perception/videos', kind: 'video', bound: false },
  'Egocentric Navigation': { file: 'egocentric_navigation.json', folder: 'vlnqa', kind: 'video', bound: false },
  'Episodic Reasoning': { file: 'episodic_reasoning.json', folder: 'tvqa/frames_fps3_hq', kind: 'frame', bound: true },
  'Counterfactual Inference': { file: 'counterfactual_inference.json', folder: 'clevrer/video_validation', kind: 'video', bound: false },
};

/** PVC's instruction before the question, and the line after the options. */
const INSTRUCTION =
  'Carefully watch the video and pay attention to the cause and sequence of events, the detail and movement of objects, and the action and pose of persons. Based on your observations, select the best option that accurately addresses the question.\n';
const LAST_LINE = '\nOnly give the best option.';

/** Frames per second of a task stored as frame folders. */
const FRAME_FOLDER_FPS = 3;

/** One MVBench item, as a job: everything a worker needs besides the data folder. */
export interface MVBenchItem {
  benchmark: 'mvbench';
  /** `<task file without .json>/<index in it>`: unique in the benchmark. */
  id: string;
  task: string;
  kind: MediaKind;
  /** The media, relative to the data folder (a video file or a folder of frames). */
  media: string;
  bound: [number, number] | null;
  question: string;
  candidates: string[];
  /** The right candidate as PVC writes it: "(B) left". */
  answer: string;
}

/** PVC's MVBench defaults: 96 frames, one tile each, 5 beams. */
export const MVBENCH_PROTOCOL: EvalProtocol = { numSegments: 96, maxNum: 1, numBeams: 5, maxNewTokens: 1000, minNewTokens: 1 };

/** The items of the tasks whose file is in `dir`/json, in the task table's order; an error names what is wrong. */
export function readMVBench(dir: string): MVBenchItem[] {
  const json = path.join(dir, 'json');
  if (!fs.existsSync(json)) throw new InputError('data', `${dir}: no json/ folder (MVBench's layout: json/<task>.json and video/)`);
  const items: MVBenchItem[] = [];
  for (const [task, row] of Object.entries(MVBENCH_TASKS)) {
    const file = path.join(json, row.file);
    if (!fs.existsSync(file)) continue;
    let list: unknown;
    try {
      list = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      throw new InputError('data', `${file}: ${(e as Error).message}`);
    }
    if (!Array.isArray(list)) throw new InputError('data', `${file}: expected a list of items`);
    list.forEach((raw: Record<string, unknown>, index) => {
      const where = `${file} item ${index}`;
      const { video, question, candidates, answer, start, end } = raw ?? {};
      if (typeof video !== 'string' || typeof question !== 'string' || typeof answer !== 'string')
        throw new InputError('data', `${where}: video, question and answer must be strings`);
      if (!Array.isArray(candidates) || candidates.length === 0 || candidates.length > 26 || !candidates.every((c) => typeof c === 'string'))
        throw new InputError('data', `${where}: candidates must be 1 to 26 strings`);
      const media = path.join('video', row.folder, video);
      if (path.isAbsolute(video) || !path.resolve(dir, media).startsWith(path.resolve(dir, 'video') + path.sep))
        throw new InputError('data', `${where}: video ${JSON.stringify(video)} leaves the data folder`);
      let bound: [number, number] | null = null;
      if (row.bound) {
        if (typeof start !== 'number' || typeof end !== 'number' || !(start <= end))
          throw new InputError('data', `${where}: start and end (seconds) are needed, start <= end`);
        bound = [start, end];
      }
      // The right option as PVC's qa_template writes it (its letter: the last candidate equal to the answer; none: "(@)").
      const right = candidates.lastIndexOf(answer);
      items.push({
        benchmark: 'mvbench',
        id: `${row.file.slice(0, -5)}/${index}`,
        task,
        kind: row.kind,
        media,
        bound,
        question,
        candidates,
        answer: `(${String.fromCharCode(65 + right)}) ${answer}`,
      });
    });
  }
  if (items.length === 0)
    throw new InputError(
      'data',
      `${json}: none of MVBench's task files (${Object.values(MVBENCH_TASKS)
        .map((t) => t.file)
        .slice(0, 3)
        .join(', ')}, ...)`,
    );
  return items;
}

/** The question the model gets for an item of `frames` frames: PVC's MVBench prompt. */
export function mvbenchQuestion(item: MVBenchItem, frames: number): string {
  const lines = Array.from({ length: frames }, (_, i) => `Frame${i + 1}:<image>`).join('\n');
  const options = item.candidates.map((c, i) => `(${String.fromCharCode(65 + i)}) ${c}`).join('\n');
  const qa = `Question: ${item.question}\nOptions:\n${options}`.trimEnd();
  return `${lines}\n${INSTRUCTION}\n${qa}${LAST_LINE}`;
}

/**
 * Whether an answer picks the right option, read as PVC reads it: "Answer: " dropped, the first word
 * (lower case, dots dropped) is the option; right when it is part of the right option's "(x)", or that
 * is part of it. Returns the option read too.
 */
export function checkAnswer(answer: string, right: string): { option: string; correct: boolean } {
  const option = answer.replaceAll('Answer: ', '').toLowerCase().split(' ')[0];
  const rightOption = right.toLowerCase().split(' ')[0];
  return { option, correct: rightOption.includes(option.replace(/\./g, '')) || option.includes(rightOption) };
}

/** An item's frames as the protocol samples them: [frames, 3, S, S] (the caller disposes) and one tile per frame. */
export async function itemFrames(
  dir: string,
  item: MVBenchItem,
  numSegments: number,
  inputSize: number,
  signal?: AbortSignal,
): Promise<{ pixelValues: tf.Tensor4D; numPatchesList: number[] }> {
  const media = path.join(dir, item.media);
  if (item.kind === 'video') {
    const video = await loadVideo(media, { numSegments, bound: item.bound ?? undefined, inputSize, maxNum: 1, signal, warn: () => {} });
    return { pixelValues: video.pixelValues, numPatchesList: video.numPatchesList };
  }
  // A folder of frames 00001.jpg, ... at 3 fps; frame numbers start at 1.
  const count = fs.readdirSync(media).length;
  const indices = getIndex(item.bound ?? undefined, FRAME_FOLDER_FPS, count, numSegments, 1);
  const tiles: tf.Tensor4D[] = [];
  try {
    for (const k of indices) tiles.push((await loadImage(path.join(media, `${String(k).padStart(5, '0')}.jpg`), { inputSize, maxNum: 1 })).pixelValues);
    return { pixelValues: tf.concat(tiles) as tf.Tensor4D, numPatchesList: tiles.map(() => 1) };
  } finally {
    tf.dispose(tiles);
  }
}

/** What is wrong with an MVBench item that came from a queue (null: nothing); its media must be inside `root`. */
export function mvbenchItemError(item: MVBenchItem, root: string): string | null {
  if (typeof item.media !== 'string' || !path.resolve(root, item.media).startsWith(root + path.sep))
    return `media ${JSON.stringify(item.media)} is not inside ${root}`;
  if (item.kind !== 'video' && item.kind !== 'frame') return `kind ${JSON.stringify(item.kind)}: expected video or frame`;
  if (
    !Array.isArray(item.candidates) ||
    item.candidates.length === 0 ||
    item.candidates.length > 26 ||
    typeof item.question !== 'string' ||
    typeof item.answer !== 'string'
  )
    return 'question, candidates (1 to 26) and answer are needed';
  if (item.bound !== null && !(Array.isArray(item.bound) && item.bound.length === 2 && item.bound[0] <= item.bound[1]))
    return `bound ${JSON.stringify(item.bound)}`;
  return null;
}
