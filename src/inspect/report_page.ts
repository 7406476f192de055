// The inspection report's page: its own CSS, its script (src/inspect/report_script.ts, a browser
// function inlined by its source) and the HTML shell that holds them and the data (ReportData, built by
// src/inspect/report.ts). One self-contained file: no network, no external script.
import type { ReportData } from './report_data';

// Not an import: report_script.ts is checked and compiled as its own program (tsconfig.page.json, with
// the DOM's types), so that the DOM stays out of this one; require() is not followed by tsc.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { PAGE_FUNCTIONS } = require('./report_script') as { PAGE_FUNCTIONS: readonly ((...args: never[]) => unknown)[] };

export const REPORT_PAGE_STYLE = `
body { font: 14px/1.4 system-ui, "Noto Sans", "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei", "WenQuanYi Micro Hei", sans-serif; margin: 16px; color: #222; background: #fafafa; }
h1 { font-size: 18px; margin: 0 0 8px; word-break: break-word; }
h2 { font-size: 16px; margin: 20px 0 6px; border-bottom: 1px solid #ccc; }
section { margin-bottom: 12px; }
.note { color: #8a5300; }
.muted { color: #666; }
.caption { font-weight: 600; margin: 6px 0; }
.readout { font: 12px ui-monospace, monospace; background: #fff; border: 1px solid #ddd; padding: 4px 6px; margin: 6px 0; min-height: 1.4em; }
.controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin: 6px 0; }
.tokens button { font: 12px ui-monospace, monospace; margin: 1px; padding: 2px 4px; border: 1px solid #999; background: #fff; cursor: pointer; }
.tokens button.on { background: #ffd54a; border-color: #a07000; }
.tok { font-family: ui-monospace, monospace; white-space: pre; }
.tok.special { color: #6a1b9a; font-size: 11px; }
.group { font-style: italic; }
.panels { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
.panel { display: inline-block; text-align: center; font-size: 12px; }
.stack { position: relative; line-height: 0; }
.stack canvas { display: block; }
.stack canvas.picture { border: 1px solid #bbb; }
.stack canvas.overlay { position: absolute; left: 1px; top: 1px; cursor: crosshair; }
.panel-label { margin-top: 3px; }
table { border-collapse: collapse; font: 12px ui-monospace, monospace; }
td, th { border: 1px solid #ddd; padding: 2px 5px; text-align: right; white-space: nowrap; }
th { background: #eee; }
td.name, th.name { text-align: left; }
.overview td { text-align: center; cursor: pointer; padding: 2px; background: #fff; }
.overview td canvas { display: block; margin: 0 auto; border: 1px solid #ccc; }
.overview td.on { outline: 3px solid #1565c0; outline-offset: -2px; }
.overview td.best .share { color: #b71c1c; font-weight: bold; }
.lens td { text-align: left; min-width: 70px; cursor: pointer; }
.lens td.hit { outline: 2px solid #0a7d22; outline-offset: -2px; font-weight: bold; }
.lens .next { font-size: 10px; color: #333; font-weight: normal; }
.scroll { overflow: auto; max-height: 520px; }
pre { white-space: pre-wrap; background: #fff; border: 1px solid #ddd; padding: 6px; max-height: 160px; overflow: auto; }
`;

/**
 * The page script: the source of the page's functions (report_script.ts), then a call of the first,
 * reportPage. Under tsx (esbuild with keepNames) that source wraps nested named functions in esbuild's
 * __name helper, which lives outside them: the page gets a no-op one (tsc's output, in dist/ and under
 * ts-jest, has no such call).
 */
export const REPORT_PAGE_SCRIPT = `'use strict';
(() => {
const __name = (target) => target;
${PAGE_FUNCTIONS.map((f) => f.toString()).join('\n')}
${PAGE_FUNCTIONS[0].name}();
})();
`;
if (/<\/script/i.test(REPORT_PAGE_SCRIPT)) throw new Error('report page script: its source must not contain "</script"');

/** JSON for a <script type="application/json"> block: '<' escaped so no string can close the script. */
function scriptJSON(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, '\\u003c')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

function escapeHTML(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The page: the data as a JSON block, the page's own style and script inline. */
export function reportPageHTML(data: ReportData): string {
  const title = escapeHTML(`pvc inspect: ${data.title}`.slice(0, 200));
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>${REPORT_PAGE_STYLE}</style></head>
<body><h1>${title}</h1><div id="report">the report needs JavaScript</div>
<script type="application/json" id="report-data">${scriptJSON(data)}</script>
<script>${REPORT_PAGE_SCRIPT}</script></body></html>
`;
}
