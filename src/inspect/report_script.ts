/// <reference lib="dom" />
// The inspection report's page script, checked and compiled with the DOM's types as its own program
// (tsconfig.page.json; the reference above serves the loaders that compile it alone: ts-jest, tsx).
// It runs in the browser, not in Node: report_page.ts inlines the source of the functions listed in
// PAGE_FUNCTIONS (Function.prototype.toString, after whichever compiler loaded this module) into the
// page and calls reportPage. So these functions must be whole on their own: they call one another and
// the browser's globals only (no import at run time, no other value of this module, no library, no
// network). The page reads the JSON block #report-data (a ReportData), builds the DOM with textContent
// (never innerHTML: tokens and prompts are data) and draws on canvases.
import type { ReportData } from './report_data';

type Child = Node | string | number | null | undefined;
type Attrs = Record<string, string | number | boolean | ((e: Event) => void)>;
type Options = [number, string][];

/** The page: reads the data, builds each section, draws the attention once the pictures have decoded. */
function reportPage(): void {
  const D = JSON.parse(document.getElementById('report-data')!.textContent!) as ReportData;
  const root = document.getElementById('report')!;
  root.textContent = '';
  const attention = attentionSection(D);
  const temporal = temporalSection(D);
  root.append(summarySection(D), attention.section, ...(temporal ? [temporal] : []), lensSection(D), statsSection(D));
  const { pictures, draw } = attention;
  Promise.all(
    pictures.map((p) =>
      p.complete
        ? Promise.resolve()
        : new Promise<void>((ok, fail) => {
            p.onload = () => ok();
            p.onerror = () => fail(new Error('a picture did not decode'));
          }),
    ),
  ).then(() => {
    draw();
    Object.assign(window, { pvcReportReady: true });
  });
}

/** An element with attributes (on* ones are listeners) and children (text, never markup). */
function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs?: Attrs | null, ...children: Child[]): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = String(v);
    else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function fmt(x: number): string {
  return x === 0 ? '0' : Math.abs(x) >= 1e4 || Math.abs(x) < 1e-3 ? x.toExponential(3) : x.toFixed(4);
}

function show(t: string): string {
  return JSON.stringify(t);
}

/** Heat colours (black, red, yellow, white) for t in [0, 1], as in the PNG heatmap of pvc inspect. */
function heat(t: number): number[] {
  const c = (x: number) => Math.round(255 * Math.min(Math.max(x, 0), 1));
  return [c(3 * t), c(3 * t - 1), c(3 * t - 2)];
}

/** A labelled <select> of [value, text] options; onchange gets the value chosen. */
function choice(label: string, id: string, options: Options, value: number, onchange: (value: number) => void): HTMLLabelElement {
  const s = el('select', { id, onchange: () => onchange(Number(s.value)) });
  for (const [v, text] of options) s.append(el('option', { value: String(v) }, text));
  s.value = String(value);
  return el('label', {}, label, s);
}

/** The head options: the mean of heads (0), then head h as h + 1. */
function headOptions(heads: number): Options {
  return [[0, 'mean of heads'], ...Array.from({ length: heads }, (_, h): [number, string] => [h + 1, 'head ' + h])];
}

function legend(max: number, label: string): HTMLSpanElement {
  const c = el('canvas', { width: 200, height: 12, class: 'legend' });
  const g = c.getContext('2d')!;
  for (let x = 0; x < 200; x++) {
    const [r, gg, b] = heat(x / 199);
    g.fillStyle = 'rgb(' + r + ',' + gg + ',' + b + ')';
    g.fillRect(x, 0, 1, 12);
  }
  return el('span', { class: 'legend-box' }, label + ' 0 ', c, ' ' + fmt(max));
}

/** Summary: the model, the token counts, the answer, the prompt and the notes. */
function summarySection(D: ReportData): HTMLElement {
  const summary = el(
    'section',
    {},
    el(
      'div',
      {},
      'model: ',
      D.model.dir,
      D.model.pvc ? ' (PVC)' : '',
      ' · ',
      D.model.llmLayers + ' LLM layers, ' + D.model.heads + ' heads · ',
      D.promptTokens + ' prompt tokens, ' + D.visualTokens + ' visual tokens (' + D.model.numImageToken + ' per tile/frame)',
    ),
    el('div', {}, 'answer: ', el('b', {}, D.answer)),
  );
  if (D.prompt) summary.append(el('details', {}, el('summary', {}, 'prompt'), el('pre', {}, D.prompt)));
  for (const n of D.notes) summary.append(el('div', { class: 'note' }, 'note: ' + n));
  return summary;
}

/** The attention view: the choice made in its controls, the maps and the elements it draws into. */
interface AttentionView {
  D: ReportData;
  state: { token: number; layer: number; head: number; opacity: number; smooth: boolean };
  /** 8 bits per value relative to each map's scale (its largest value). */
  maps: Uint8Array;
  scales: Float32Array;
  mapSize: number;
  pictures: HTMLImageElement[];
  canvases: HTMLCanvasElement[];
  massCells: HTMLSpanElement[];
  legendSlot: HTMLElement;
  bars: HTMLCanvasElement | null;
}

/** Attention of a generated token over the visual tokens: its controls, the overlays and their drawing. */
function attentionSection(D: ReportData): { section: HTMLElement; pictures: HTMLImageElement[]; draw: () => void } {
  const A = D.attention;
  const pictures = D.pictures.map((p) => Object.assign(new Image(), { src: p.url }));
  const section = el('section', {}, el('h2', {}, 'Attention of a generated token over the visual tokens'));
  if (A.tokens === 0 || D.panels.length === 0) {
    const why =
      D.panels.length === 0
        ? 'no images or frames were given to the report'
        : 'no attention recorded: inspect with taps llm.layers.*.attn.probs and generate at least one token';
    section.append(el('div', { class: 'muted' }, why));
    return { section, pictures, draw: () => {} };
  }
  const view: AttentionView = {
    D,
    state: { token: 0, layer: A.layers.length ? A.layers[A.layers.length - 1] : 0, head: 0, opacity: 0.6, smooth: false },
    maps: Uint8Array.from(atob(A.maps), (c) => c.charCodeAt(0)),
    scales: new Float32Array(Uint8Array.from(atob(A.scales), (c) => c.charCodeAt(0)).buffer),
    mapSize: D.panels.reduce((a, p) => a + p.tiles.length * A.g * A.g, 0),
    pictures,
    canvases: [],
    massCells: [],
    legendSlot: el('span'),
    bars: null,
  };
  const draw = () => drawAttention(view);
  section.append(...attentionControls(view, draw), attentionPanels(view));
  if (D.model.dataFlag === 3) section.append(...frameBars(view));
  return { section, pictures, draw };
}

/** The generated tokens to choose from, the layer, head, opacity and smoothing, and the legend's slot. */
function attentionControls(view: AttentionView, redraw: () => void): HTMLElement[] {
  const { D, state } = view;
  const A = D.attention;
  const tokens = el('div', { class: 'tokens' }, 'generated token: ');
  D.generated.slice(0, A.tokens).forEach((t, j) =>
    tokens.append(
      el(
        'button',
        {
          'data-token': j,
          onclick: () => {
            state.token = j;
            redraw();
          },
        },
        j + ': ' + show(t),
      ),
    ),
  );
  const heads = headOptions(A.headsKept > 1 ? D.model.heads : 0);
  return [
    el(
      'div',
      { class: 'muted' },
      "Where the model looked when it predicted the chosen token: the attention row of the position that predicted it (the prompt's last position for token 0), over the visual tokens, summed over each tile's frames" +
        (A.pool > 1 ? ', pooled ' + A.pool + 'x' + A.pool : '') +
        '. Colours are scaled to the largest value of the map shown (maps are stored at 8 bits relative to it).',
    ),
    tokens,
    el(
      'div',
      { class: 'controls' },
      choice(
        'LLM layer ',
        'layer',
        A.layers.map((l) => [l, String(l)]),
        state.layer,
        (v) => {
          state.layer = v;
          redraw();
        },
      ),
      choice('head ', 'head', heads, 0, (v) => {
        state.head = v;
        redraw();
      }),
      el(
        'label',
        {},
        'opacity ',
        el('input', {
          id: 'opacity',
          type: 'range',
          min: 0,
          max: 1,
          step: 0.05,
          value: state.opacity,
          oninput: (e) => {
            state.opacity = Number((e.target as HTMLInputElement).value);
            redraw();
          },
        }),
      ),
      el(
        'label',
        {},
        el('input', {
          id: 'smooth',
          type: 'checkbox',
          onchange: (e) => {
            state.smooth = (e.target as HTMLInputElement).checked;
            redraw();
          },
        }),
        ' smooth',
      ),
      view.legendSlot,
    ),
  ];
}

/** A canvas per panel (image, thumbnail or frame) and the attention mass on its tokens. */
function attentionPanels(view: AttentionView): HTMLElement {
  const { D } = view;
  const panels = el('div', { class: 'panels' });
  D.panels.forEach((p) => {
    const pic = D.pictures[p.picture];
    const c = el('canvas', { width: pic.width, height: pic.height, class: 'overlay', 'data-panel': p.label });
    if (pic.width < 200) c.style.width = pic.width * 2 + 'px';
    const mass = el('span');
    view.canvases.push(c);
    view.massCells.push(mass);
    panels.append(el('div', { class: 'panel' }, c, p.label + ' · ' + p.tokens + ' tokens · attention ', mass));
  });
  return panels;
}

/** Video: the frames' token counts and a bar chart of the attention mass on each frame. */
function frameBars(view: AttentionView): HTMLElement[] {
  const { D } = view;
  const bars = el('canvas', { width: Math.max(200, D.panels.length * 24), height: 120, id: 'frame-bars' });
  view.bars = bars;
  const table = el(
    'table',
    {},
    el('tr', {}, el('th', {}, 'frame'), ...D.panels.map((p) => el('th', {}, p.label))),
    el('tr', {}, el('th', {}, 'visual tokens'), ...D.panels.map((p) => el('td', {}, p.tokens))),
  );
  return [
    el('h2', {}, 'Frames: tokens and attention per frame'),
    table,
    el('div', { class: 'muted' }, "attention mass of the chosen token, layer and head on each frame's tokens:"),
    bars,
  ];
}

/** Draws the chosen map over every panel's picture, the masses, the legend and the frame bars. */
function drawAttention(view: AttentionView): void {
  const { D, state, maps, scales, mapSize } = view;
  const A = D.attention;
  const li = A.layers.indexOf(state.layer);
  const h = Math.min(state.head, A.headsKept - 1);
  const k = (state.token * A.layers.length + li) * A.headsKept + h;
  const map = maps.subarray(k * mapSize, (k + 1) * mapSize);
  const max = scales[k];
  document.querySelectorAll<HTMLElement>('.tokens button').forEach((b) => b.classList.toggle('on', Number(b.dataset.token) === state.token));
  const fresh = legend(max, 'attention');
  view.legendSlot.replaceWith(fresh);
  view.legendSlot = fresh;
  let offset = 0;
  D.panels.forEach((p, k) => {
    const c = view.canvases[k];
    const g = c.getContext('2d')!;
    g.globalAlpha = 1;
    g.drawImage(view.pictures[p.picture], 0, 0, c.width, c.height);
    for (const tile of p.tiles) {
      const small = document.createElement('canvas');
      small.width = small.height = A.g;
      const sg = small.getContext('2d')!;
      const img = sg.createImageData(A.g, A.g);
      for (let i = 0; i < A.g * A.g; i++) {
        const [r, gg, b] = heat(map[offset + i] / 255);
        img.data.set([r, gg, b, 255], i * 4);
      }
      offset += A.g * A.g;
      sg.putImageData(img, 0, 0);
      const [x0, y0, x1, y1] = tile.rect;
      g.imageSmoothingEnabled = state.smooth;
      g.globalAlpha = state.opacity;
      g.drawImage(small, x0 * c.width, y0 * c.height, (x1 - x0) * c.width, (y1 - y0) * c.height);
    }
    g.globalAlpha = 1;
    view.massCells[k].textContent = (100 * D.frameMass[state.token][li][h][k]).toFixed(2) + '%';
  });
  const chart = view.bars;
  if (chart) {
    const g = chart.getContext('2d')!;
    g.clearRect(0, 0, chart.width, chart.height);
    const masses = D.frameMass[state.token][li][h];
    const top = Math.max(...masses, 1e-12);
    const w = chart.width / masses.length;
    masses.forEach((m, k) => {
      g.fillStyle = '#c0392b';
      const hgt = (chart.height - 14) * (m / top);
      g.fillRect(k * w + 2, chart.height - 14 - hgt, w - 4, hgt);
      g.fillStyle = '#333';
      g.font = '10px sans-serif';
      g.fillText(String(k + 1), k * w + 4, chart.height - 2);
    });
  }
}

/** Temporal attention (PVC): frames x frames per ViT layer; null for a model without it. */
function temporalSection(D: ReportData): HTMLElement | null {
  if (D.temporal.length === 0) {
    if (!D.model.pvc) return null;
    return el(
      'section',
      {},
      el('h2', {}, 'Temporal attention across frames (PVC)'),
      el('div', { class: 'muted' }, 'no temporal attention recorded: inspect with taps vision.layers.*.temporal.probs'),
    );
  }
  const T = { layer: 0, head: 0 };
  const sec = el('section', {}, el('h2', {}, 'Temporal attention across frames (PVC)'));
  const first = D.temporal[0];
  const canvas = el('canvas', { width: 240, height: 240, id: 'temporal' });
  let tLegend = el('span');
  const info = el('div', { class: 'muted' });
  sec.append(
    el(
      'div',
      { class: 'controls' },
      choice(
        'ViT layer ',
        'temporal-layer',
        D.temporal.map((t, i) => [i, String(t.layer)]),
        0,
        (v) => {
          T.layer = v;
          drawTemporal();
        },
      ),
      choice('head ', 'temporal-head', headOptions(first.heads), 0, (v) => {
        T.head = v;
        drawTemporal();
      }),
      tLegend,
    ),
    info,
    canvas,
  );
  const drawTemporal = () => {
    const t = D.temporal[T.layer];
    const m = t.maps[T.head];
    const F = t.frames;
    const max = Math.max(...m, 1e-12);
    info.textContent =
      'row: the attending frame, column: the frame attended to (causal); mean over ' +
      t.sequences +
      ' sequence(s) of ' +
      F +
      ' frames and ' +
      t.tokens +
      ' tokens per frame';
    const g = canvas.getContext('2d')!;
    const s = canvas.width / F;
    for (let i = 0; i < F; i++)
      for (let j = 0; j < F; j++) {
        const [r, gg, b] = heat(m[i * F + j] / max);
        g.fillStyle = 'rgb(' + r + ',' + gg + ',' + b + ')';
        g.fillRect(j * s, i * s, Math.ceil(s), Math.ceil(s));
      }
    const fresh = legend(max, 'probability');
    tLegend.replaceWith(fresh);
    tLegend = fresh;
  };
  drawTemporal();
  return sec;
}

/** Logit lens: each layer's top token at each position. */
function lensSection(D: ReportData): HTMLElement {
  const lensSec = el('section', {}, el('h2', {}, 'Logit lens'));
  if (D.lens.layers.length === 0) {
    lensSec.append(el('div', { class: 'muted' }, 'no layer states recorded: inspect with taps llm.layers.*.out'));
  } else {
    lensSec.append(
      el(
        'div',
        { class: 'muted' },
        "Each layer's state through the final norm and output head: the top token and its probability (hover for the top " +
          D.lens.columns[0].cells[0].top.length +
          '). Green outline: the token that actually came next.',
      ),
    );
    const table = el('table', { class: 'lens' });
    table.append(el('tr', {}, el('th', { class: 'name' }, 'position'), ...D.lens.columns.map((c) => el('th', {}, c.label))));
    table.append(el('tr', {}, el('th', { class: 'name' }, 'input token'), ...D.lens.columns.map((c) => el('td', {}, show(c.input)))));
    table.append(el('tr', {}, el('th', { class: 'name' }, 'next token'), ...D.lens.columns.map((c) => el('td', {}, c.next === null ? '' : show(c.next)))));
    for (let r = D.lens.layers.length - 1; r >= 0; r--) {
      table.append(
        el(
          'tr',
          {},
          el('th', { class: 'name' }, 'layer ' + D.lens.layers[r]),
          ...D.lens.columns.map((c) => {
            const cell = c.cells[r];
            const [tok, p] = cell.top[0];
            const td = el(
              'td',
              { class: cell.hit ? 'hit' : '', title: cell.top.map(([t, q]) => show(t) + ' ' + q.toFixed(3)).join('\n') },
              show(tok) + ' ' + p.toFixed(2),
            );
            td.style.background = 'rgba(52, 120, 246, ' + (0.6 * p).toFixed(3) + ')';
            return td;
          }),
        ),
      );
    }
    lensSec.append(el('div', { class: 'scroll' }, table));
  }
  return lensSec;
}

/** Statistics of every tap. */
function statsSection(D: ReportData): HTMLElement {
  const statSec = el('section', {}, el('h2', {}, 'Tap statistics (' + D.stats.length + ' taps; generation step k as stepk.NAME)'));
  const st = el(
    'table',
    { id: 'stats' },
    el('tr', {}, ...['name', 'shape', 'mean', 'std', 'min', 'max'].map((h, i) => el('th', { class: i === 0 ? 'name' : '' }, h))),
  );
  for (const [name, shape, ...v] of D.stats)
    st.append(el('tr', {}, el('td', { class: 'name' }, name), el('td', {}, '[' + shape.join(', ') + ']'), ...v.map((x) => el('td', {}, fmt(x)))));
  statSec.append(el('div', { class: 'scroll' }, st));
  return statSec;
}

/** The page's functions, reportPage first: report_page.ts inlines their source. */
export const PAGE_FUNCTIONS: readonly ((...args: never[]) => unknown)[] = [
  reportPage,
  el,
  fmt,
  show,
  heat,
  choice,
  headOptions,
  legend,
  summarySection,
  attentionSection,
  attentionControls,
  attentionPanels,
  frameBars,
  drawAttention,
  temporalSection,
  lensSection,
  statsSection,
];
