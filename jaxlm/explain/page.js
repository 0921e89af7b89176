// The page of jaxlm.explain.render.to_html: draws everything from the embedded JSON.
const D = JSON.parse(document.getElementById('data').textContent);
const N = D.tokens.length;
let sel = null, method = D.methods[0] || null, view = 'surprisal';
const byIndex = {};
D.targets.forEach(t => { byIndex[t.predicts_index] = t; });
function esc(s){return s.replace(/[&<>]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;'}[c]));}
function show(s){return esc(s.replace(/\n/g,'\u21b5\n').replace(/\t/g,'\u21e5'));}
function colour(v, scale, diverging){
  if (v === null || v === undefined || !scale) return 'transparent';
  const x = Math.max(-1, Math.min(1, v / scale));
  const a = Math.abs(x);
  if (diverging && x < 0) return `rgba(51,102,204,${a.toFixed(3)})`;
  return `rgba(204,51,51,${a.toFixed(3)})`;
}
function values(){
  // what colours the text: surprisal, or the selected target's attributions
  if (view === 'surprisal') return {v: D.tokens.map(t => t.surprisal_bits), div: false};
  if (view === 'entropy') return {v: D.tokens.map(t => t.entropy_bits), div: false};
  if (view === 'attention' && D.attention && sel !== null) {
    const L = document.getElementById('layer').value, H = document.getElementById('head').value;
    const row = L === 'rollout' ? D.attention.rollout[sel] :
      (H === 'mean' ? D.attention.maps[+L].reduce((acc, h) => acc.map((x, i) => x + h[sel][i] / D.attention.maps[+L].length), new Array(N).fill(0)) : D.attention.maps[+L][+H][sel]);
    return {v: row, div: false};
  }
  const t = sel === null ? null : byIndex[sel];
  if (!t || !method || !t.attributions[method]) return {v: new Array(N).fill(null), div: true};
  const a = t.attributions[method];
  return {v: D.tokens.map((_, i) => i < a.length ? a[i] : null), div: method !== 'saliency'};
}
function draw(){
  const {v, div} = values();
  const scale = Math.max(0, ...v.filter(x => x !== null).map(Math.abs));
  const box = document.getElementById('text');
  box.innerHTML = '';
  D.tokens.forEach((t, i) => {
    const s = document.createElement('span');
    s.className = 'tok' + (i === sel ? ' sel' : '');
    s.dataset.index = i;
    s.style.background = colour(v[i], scale, div);
    s.title = `#${i} ${JSON.stringify(t.text)}` + (v[i] !== null && v[i] !== undefined ? ` ${(+v[i]).toPrecision(3)}` : '');
    s.innerHTML = show(t.text);
    s.onclick = () => { sel = i; if (view === 'surprisal' && byIndex[i]) view = 'attribution'; sync(); };
    box.appendChild(s);
  });
  // the prediction after the text: a slot after the last token
  const nx = document.createElement('span');
  nx.className = 'tok next' + (sel === N ? ' sel' : '');
  nx.dataset.index = N;
  nx.title = 'the prediction after the text';
  nx.textContent = '\u2192?';
  nx.onclick = () => { sel = N; if (view === 'surprisal' && byIndex[N]) view = 'attribution'; sync(); };
  box.appendChild(nx);
  panel();
}
function bar(v, scale){
  const w = scale ? Math.round(80 * Math.abs(v) / scale) : 0;
  return `<span class="bar${v < 0 ? ' neg' : ''}" style="width:${w}px"></span> ${(+v).toPrecision(3)}`;
}
function panel(){
  const p = document.getElementById('side');
  if (sel === null) {
    p.innerHTML = '<p class="muted">Click a token to see how it was predicted and why.</p>';
    return;
  }
  let h;
  if (sel === N) {
    h = `<h1>The next token after the text</h1>` + topTable(D.next.top) +
      `<p class="muted">entropy ${fmt(D.next.entropy_bits)} bits</p>`;
  } else {
  const t = D.tokens[sel];
  h = `<h1>Token #${sel} <code>${show(JSON.stringify(t.text))}</code></h1>`;
  if (sel > 0) h += `<p>p = ${fmt(t.prob)}, rank ${t.rank}, surprisal ${fmt(t.surprisal_bits)} bits, entropy ${fmt(t.entropy_bits)} bits</p>` + topTable(t.top);
  else h += '<p class="muted">The first token has no prediction.</p>';
  if (t.ngram) h += `<h2 style="font-size:15px">n-gram</h2><p>${esc(t.ngram.summary)}</p>` + pathTable(t.ngram.path);
  }
  const tg = byIndex[sel];
  if (tg) {
    h += `<h2 style="font-size:15px">Why <code>${show(JSON.stringify(tg.token.text))}</code>` +
      (tg.contrast ? ` rather than <code>${show(JSON.stringify(tg.contrast.text))}</code>` : '') +
      ` (${method})</h2><p class="muted">score ${fmt(tg.score)}` +
      (tg.baseline_score !== null ? `, baseline ${fmt(tg.baseline_score)}, completeness gap ${(100 * tg.completeness_gap).toFixed(3)}%` : '') + '</p>';
    const a = tg.attributions[method] || [];
    const scale = Math.max(0, ...a.map(Math.abs));
    h += '<table id="attr"><tr><th>#</th><th>token</th><th>attribution</th></tr>';
    const order = a.map((v, i) => i).sort((x, y) => Math.abs(a[y]) - Math.abs(a[x])).slice(0, 12);
    order.forEach(i => { h += `<tr><td>${i}</td><td><code>${show(JSON.stringify(D.tokens[i].text))}</code></td><td>${bar(a[i], scale)}</td></tr>`; });
    if (tg.carry[method] !== undefined && D.start > 0) h += `<tr><td>-</td><td>state before the window</td><td>${bar(tg.carry[method], scale)}</td></tr>`;
    h += '</table>';
  } else if (sel > 0) {
    h += '<p class="muted">No attribution was computed for this prediction.</p>';
  }
  p.innerHTML = h;
}
function fmt(x){return x === null || x === undefined ? '-' : (+x).toPrecision(3);}
function topTable(top){
  return '<table><tr><th>top</th><th>p</th></tr>' + top.map(c => `<tr><td><code>${show(JSON.stringify(c.text))}</code></td><td>${fmt(c.prob)}</td></tr>`).join('') + '</table>';
}
function pathTable(path){
  return '<table><tr><th>order</th><th>found</th><th>log p / back-off</th><th>count</th></tr>' + path.map(s =>
    `<tr><td>${s.order}</td><td>${s.found ? 'yes' : 'no'}</td><td>${fmt(s.found ? s.log_prob : s.log_backoff)}</td><td>${s.count === null ? '-' : s.count + ' / ' + s.context_count}</td></tr>`).join('') + '</table>';
}
function sync(){
  document.querySelectorAll('input[name=view]').forEach(r => { r.checked = r.value === view; });
  draw();
}
document.querySelectorAll('input[name=view]').forEach(r => r.onchange = () => { view = r.value; draw(); });
const ms = document.getElementById('method');
D.methods.forEach(m => { const o = document.createElement('option'); o.value = m; o.textContent = m; ms.appendChild(o); });
ms.onchange = () => { method = ms.value; if (view !== 'attribution') view = 'attribution'; sync(); };
if (D.attention) {
  const ls = document.getElementById('layer'), hs = document.getElementById('head');
  D.attention.maps.forEach((_, i) => { const o = document.createElement('option'); o.value = i; o.textContent = 'layer ' + i; ls.appendChild(o); });
  const o = document.createElement('option'); o.value = 'rollout'; o.textContent = 'rollout'; ls.appendChild(o);
  const m = document.createElement('option'); m.value = 'mean'; m.textContent = 'mean of heads'; hs.appendChild(m);
  D.attention.maps[0].forEach((_, i) => { const o = document.createElement('option'); o.value = i; o.textContent = 'head ' + i; hs.appendChild(o); });
  ls.onchange = hs.onchange = () => { view = 'attention'; sync(); };
} else { document.getElementById('attn').style.display = 'none'; }
const last = D.targets.length ? D.targets[D.targets.length - 1].predicts_index : null;
if (last !== null) { sel = last; view = 'attribution'; }
// #token=I in the address selects token I (N: the prediction after the text)
const asked = location.hash.match(/token=(\d+)/);
if (asked && +asked[1] <= N) { sel = +asked[1]; view = byIndex[sel] ? 'attribution' : 'surprisal'; }
sync();
