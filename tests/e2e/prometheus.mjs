// A strict reader of the Prometheus text exposition format (version 0.0.4), enough to check
// that /metrics is something Prometheus will scrape: every sample belongs to a family with one
// TYPE line, names and labels are well formed, values are numbers, histograms are cumulative and
// end with a +Inf bucket equal to their count.

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/;
const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)/y;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

function parseValue(raw, line) {
  if (raw === '+Inf') return Infinity;
  if (raw === '-Inf') return -Infinity;
  if (raw === 'NaN') return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(raw)) throw new Error(`not a number: ${JSON.stringify(line)}`);
  return Number(raw);
}

function parseLabels(raw, line) {
  const labels = {};
  if (raw === undefined || raw === '') return labels;
  LABEL.lastIndex = 0;
  while (LABEL.lastIndex < raw.length) {
    const m = LABEL.exec(raw);
    if (!m) throw new Error(`bad labels: ${JSON.stringify(line)}`);
    if (m[1] in labels) throw new Error(`label ${m[1]} twice: ${JSON.stringify(line)}`);
    labels[m[1]] = m[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    if (m[3] === '') break;
  }
  return labels;
}

/// The family a sample name belongs to, given the TYPE lines seen.
function familyOf(name, families) {
  if (families.has(name)) return name;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (name.endsWith(suffix)) {
      const base = name.slice(0, -suffix.length);
      const type = families.get(base)?.type;
      if (type === 'histogram' || (type === 'summary' && suffix !== '_bucket')) return base;
    }
  }
  return undefined;
}

/// Parses a /metrics body; throws on anything Prometheus would reject. Returns
/// Map(family -> { type, help, samples: [{ name, labels, value }] }).
export function parsePrometheus(text) {
  const families = new Map();
  if (!text.endsWith('\n')) throw new Error('the body must end with a newline');
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (!m) continue; // a plain comment
      const [, kind, name, rest] = m;
      if (!NAME.test(name)) throw new Error(`bad metric name: ${JSON.stringify(line)}`);
      const family = families.get(name) ?? { type: undefined, help: undefined, samples: [] };
      if (kind === 'TYPE') {
        if (!TYPES.has(rest)) throw new Error(`unknown type: ${JSON.stringify(line)}`);
        if (family.type) throw new Error(`TYPE twice for ${name}`);
        if (family.samples.length) throw new Error(`TYPE of ${name} after its samples`);
        family.type = rest;
      } else {
        if (family.help !== undefined) throw new Error(`HELP twice for ${name}`);
        family.help = rest;
      }
      families.set(name, family);
      continue;
    }
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`not a sample line: ${JSON.stringify(line)}`);
    const [, name, rawLabels, rawValue] = m;
    const familyName = familyOf(name, families);
    if (!familyName || !families.get(familyName).type) throw new Error(`sample without a TYPE: ${JSON.stringify(line)}`);
    families.get(familyName).samples.push({ name, labels: parseLabels(rawLabels, line), value: parseValue(rawValue, line) });
  }
  for (const [name, family] of families) {
    if (family.type === 'histogram') checkHistogram(name, family);
    if (family.type === 'counter') {
      for (const s of family.samples) if (!(s.value >= 0)) throw new Error(`counter ${s.name} is ${s.value}`);
    }
  }
  return families;
}

function checkHistogram(name, family) {
  const series = new Map();
  const key = (labels) => JSON.stringify(Object.entries(labels).filter(([k]) => k !== 'le').sort());
  for (const s of family.samples) {
    const k = key(s.labels);
    const entry = series.get(k) ?? { buckets: [], count: undefined, sum: undefined };
    if (s.name === `${name}_bucket`) {
      if (!('le' in s.labels)) throw new Error(`${name}_bucket without le`);
      entry.buckets.push([parseValue(s.labels.le, s.labels.le), s.value]);
    } else if (s.name === `${name}_count`) entry.count = s.value;
    else if (s.name === `${name}_sum`) entry.sum = s.value;
    series.set(k, entry);
  }
  for (const [k, { buckets, count, sum }] of series) {
    if (count === undefined || sum === undefined) throw new Error(`${name}${k}: missing _count or _sum`);
    const last = buckets.at(-1);
    if (!last || last[0] !== Infinity) throw new Error(`${name}${k}: no +Inf bucket last`);
    if (last[1] !== count) throw new Error(`${name}${k}: +Inf bucket ${last[1]} != count ${count}`);
    for (let i = 1; i < buckets.length; i++) {
      if (!(buckets[i][0] > buckets[i - 1][0])) throw new Error(`${name}${k}: le not increasing`);
      if (buckets[i][1] < buckets[i - 1][1]) throw new Error(`${name}${k}: buckets not cumulative`);
    }
  }
}

/// Sum of the samples called `name` whose labels include `labels`.
export function sampleSum(families, name, labels = {}) {
  let total = 0;
  for (const family of families.values()) {
    for (const s of family.samples) {
      if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)) total += s.value;
    }
  }
  return total;
}

/// Fetches and parses a process's /metrics.
export async function scrape(url) {
  const res = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) });
  if (res.status !== 200) throw new Error(`${url}/metrics answered ${res.status}`);
  const type = res.headers.get('content-type') ?? '';
  if (!type.startsWith('text/plain')) throw new Error(`${url}/metrics content-type ${type}`);
  return parsePrometheus(await res.text());
}
