// `npm run eval:harness`: lmms-eval (PyPI `lmms-eval`, its `openai` chat model) as a real client of
// `pvc serve`, on a local task made from test/fixtures/scenes-eval (its single-image questions, images
// and answers): the task's accuracy as lmms-eval reports it, against the toy's own accuracy on the same
// questions (model.chat, greedy, the same exact-match rule). Not run by CI; the README shows its output.
//
//   PVC_LMMS_PYTHON=/path/to/venv/bin/python npx tsx test/harness/lmms-eval.ts [--per-kind 6]
//
// The venv needs `pip install lmms-eval` (not a project dependency).
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadImage } from '../../src/preprocess/image';
import { PVCModel } from '../../src/pvc_model';
import { ChatServer } from '../../src/server/server';

const ROOT = path.join(__dirname, '..', '..');
const SCENES = path.join(ROOT, 'test', 'fixtures', 'scenes-eval');
const KINDS = ['colour', 'shape', 'exists', 'count', 'position'];

interface Question {
  id: string;
  kind: string;
  files: string[];
  question: string;
  answer: string;
  /** The oracle's (upstream PyTorch) answer, recorded in eval.json. */
  torch_answer: string;
}

const UTILS = `from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"accuracy": float(results[0].strip().lower() == doc["answer"].strip().lower())}
`;

async function main(): Promise<number> {
  const python = process.env.PVC_LMMS_PYTHON ?? 'python3';
  const i = process.argv.indexOf('--per-kind');
  const perKind = i < 0 ? 6 : Number(process.argv[i + 1]);
  const all = (JSON.parse(fs.readFileSync(path.join(SCENES, 'eval.json'), 'utf8')) as { questions: Question[] }).questions;
  const questions = KINDS.flatMap((k) => all.filter((q) => q.kind === k && q.files.length === 1).slice(0, perKind));
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-lmms-'));
  const task = path.join(work, 'task');
  fs.mkdirSync(task);
  const docs = questions.map((q) => ({ id: q.id, image: path.join(SCENES, q.files[0]), question: q.question.replace(/^<image>\n/, ''), answer: q.answer }));
  fs.writeFileSync(path.join(task, 'scenes.jsonl'), docs.map((d) => JSON.stringify(d)).join('\n') + '\n');
  fs.writeFileSync(path.join(task, 'utils.py'), UTILS);
  fs.writeFileSync(
    path.join(task, 'pvc_scenes.yaml'),
    [
      'task: pvc_scenes',
      'dataset_path: json',
      'dataset_kwargs:',
      `  data_files: {test: ${JSON.stringify(path.join(task, 'scenes.jsonl'))}}`,
      'test_split: test',
      'output_type: generate_until',
      'doc_to_visual: !function utils.doc_to_visual',
      'doc_to_text: !function utils.doc_to_text',
      'doc_to_target: answer',
      'process_results: !function utils.process_results',
      'generation_kwargs: {max_new_tokens: 16, temperature: 0, do_sample: false}',
      'metric_list:',
      '  - {metric: accuracy, aggregation: mean, higher_is_better: true}',
      '',
    ].join('\n'),
  );

  const model = await PVCModel.load(path.join(ROOT, 'weights', 'scenes-pvc'));
  // The toy alone: model.chat on the same files and questions, the same rule.
  let own = 0;
  for (const q of questions) {
    const img = await loadImage(path.join(SCENES, q.files[0]), { inputSize: model.config.image_size, maxNum: model.config.max_dynamic_patch });
    const answer = await model.chat(img.pixelValues, q.question, { maxNewTokens: 16 });
    img.pixelValues.dispose();
    if (answer.trim().toLowerCase() === q.answer.toLowerCase()) own++;
  }
  const server = await ChatServer.start({ model, modelName: 'scenes-pvc', port: 0, limits: { maxQueue: 64 } });
  try {
    // lmms-eval calls the server from its own process, so the server's event loop must stay free: it runs async.
    const { spawn } = await import('child_process');
    const out = path.join(work, 'out');
    const args = ['-m', 'lmms_eval', '--model', 'openai', '--model_args', `model_version=scenes-pvc,base_url=${server.url}/v1,api_key=none,timeout=120`];
    args.push('--tasks', 'pvc_scenes', '--include_path', task, '--batch_size', '1', '--output_path', out);
    process.stderr.write(`lmms-eval: ${python} ${args.join(' ')}\n`);
    const code = await new Promise<number>((resolve) => {
      const child = spawn(python, args, { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, HF_DATASETS_OFFLINE: '1', HF_HUB_OFFLINE: '1' } });
      child.on('exit', (c) => resolve(c ?? 1));
    });
    if (code !== 0) throw new Error(`lmms-eval exited ${code}`);
    const files = spawnSync('find', [out, '-name', '*results*.json'], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean);
    if (files.length === 0) throw new Error(`lmms-eval wrote no results under ${out} (its log above says why)`);
    const results = JSON.parse(fs.readFileSync(files[0], 'utf8')) as { results: Record<string, Record<string, number>> };
    const reported = Object.entries(results.results.pvc_scenes).find(([k]) => k.startsWith('accuracy'))![1];
    const torch = questions.filter((q) => q.torch_answer.trim().toLowerCase() === q.answer.toLowerCase()).length / questions.length;
    const line = `questions ${questions.length} | lmms-eval's accuracy ${reported} | the toy's own (model.chat) ${own / questions.length} | upstream PyTorch's (eval.json) ${torch}`;
    console.log(line);
    return Math.abs(reported - own / questions.length) < 1e-9 ? 0 : 1;
  } finally {
    await server.close();
    model.dispose();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().then(
  (code) => (process.exitCode = code),
  (e) => {
    console.error(e);
    process.exitCode = 1;
  },
);
