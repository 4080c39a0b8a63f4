// The charts of the harness's HTML report: hand-written SVG, no library, no network.
// Reads the run report from <script id="report-data">; every chart is an <svg class="chart">
// with data-chart (its name), data-series and data-points (what it drew), which is what
// the report's browser test checks.
(function () {
  'use strict';
  var SVG = 'http://www.w3.org/2000/svg';
  var COLORS = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4b5563',
    '#65a30d', '#9333ea'];
  var WIDTH = 760, HEIGHT = 260, LEFT = 60, RIGHT = 16, TOP = 12, BOTTOM = 40;
  var report = JSON.parse(document.getElementById('report-data').textContent);
  var timeline = report.timeline || { scenarios: [], samples: [] };
  var samples = timeline.samples || [];
  var charts = 0;

  function node(tag, attrs, parent, text) {
    var element = document.createElement(tag);
    setAll(element, attrs);
    if (text !== undefined) element.textContent = text;
    if (parent) parent.appendChild(element);
    return element;
  }
  function svg(tag, attrs, parent, text) {
    var element = document.createElementNS(SVG, tag);
    setAll(element, attrs);
    if (text !== undefined) element.textContent = text;
    if (parent) parent.appendChild(element);
    return element;
  }
  function setAll(element, attrs) {
    for (var key in attrs || {}) {
      if (Object.prototype.hasOwnProperty.call(attrs, key)) element.setAttribute(key, attrs[key]);
    }
  }
  function number(value, digits) {
    if (value === null || value === undefined || !isFinite(value)) return '-';
    var abs = Math.abs(value);
    if (abs >= 1e6) return (value / 1e6).toFixed(1) + 'M';
    if (abs >= 1e4) return (value / 1e3).toFixed(1) + 'k';
    if (digits !== undefined) return value.toFixed(digits);
    if (abs >= 100 || value === Math.round(value)) return String(Math.round(value));
    return value.toFixed(abs >= 10 ? 1 : 2);
  }
  function ms(value) {
    if (value === null || value === undefined) return '-';
    return value >= 10000 ? number(value / 1000, 2) + ' s' : number(value, 1) + ' ms';
  }
  function seconds(value) {
    if (value >= 3600) return (value / 3600).toFixed(1) + 'h';
    if (value >= 120) return (value / 60).toFixed(1) + 'm';
    return number(value) + 's';
  }
  // Round steps (1, 2, 5 × 10^n) for about `count` ticks from 0 to max.
  function ticks(max, count) {
    if (!(max > 0)) max = 1;
    var raw = max / count;
    var power = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * power; }).filter(function (s) { return s >= raw; })[0];
    var out = [];
    for (var value = 0; value <= max * 1.0001 + step; value += step) {
      out.push(value);
      if (value >= max) break;
    }
    return out;
  }
  function section(title, note) {
    var element = node('section', {}, document.getElementById('charts'));
    node('h2', {}, element, title);
    if (note) node('p', { class: 'note' }, element, note);
    return element;
  }
  function legend(parent, series) {
    var element = node('div', { class: 'legend' }, parent);
    series.forEach(function (s, index) {
      var item = node('span', {}, element);
      node('i', { style: 'background:' + (s.color || COLORS[index % COLORS.length]) }, item);
      item.appendChild(document.createTextNode(s.name));
    });
  }

  // A line chart. `options.x`: 'time' (seconds) or a list of category labels (x = index).
  // Series: {name, points: [[x, y or null], ...]}; null leaves a gap.
  function lineChart(parent, name, title, options, series) {
    var figure = node('figure', { class: 'figure' }, parent);
    node('figcaption', {}, figure, title);
    var categories = Array.isArray(options.x) ? options.x : null;
    var xs = [], ymax = 0, points = 0;
    series.forEach(function (s) {
      s.points.forEach(function (p) {
        xs.push(p[0]);
        if (p[1] !== null && isFinite(p[1])) {
          ymax = Math.max(ymax, p[1]);
          points += 1;
        }
      });
    });
    var xmin = categories ? 0 : Math.min.apply(null, xs.concat([0]));
    var xmax = categories ? Math.max(categories.length - 1, 1) : Math.max.apply(null, xs.concat([1]));
    if (xmax <= xmin) xmax = xmin + 1;
    var yticks = ticks(ymax, 5);
    var ytop = yticks[yticks.length - 1];
    var plotW = WIDTH - LEFT - RIGHT, plotH = HEIGHT - TOP - BOTTOM;
    var sx = function (x) { return LEFT + (x - xmin) / (xmax - xmin) * plotW; };
    var sy = function (y) { return TOP + plotH - y / ytop * plotH; };
    var chart = svg('svg', {
      class: 'chart', viewBox: '0 0 ' + WIDTH + ' ' + HEIGHT, 'data-chart': name,
      'data-series': series.length, 'data-points': points, role: 'img', 'aria-label': title
    }, figure);
    yticks.forEach(function (value) {
      svg('line', { x1: LEFT, x2: WIDTH - RIGHT, y1: sy(value), y2: sy(value), class: 'grid' }, chart);
      svg('text', { x: LEFT - 6, y: sy(value) + 4, class: 'tick', 'text-anchor': 'end' }, chart, number(value));
    });
    if (categories) {
      categories.forEach(function (label, index) {
        svg('text', { x: sx(index), y: HEIGHT - BOTTOM + 16, class: 'tick', 'text-anchor': 'middle' }, chart, label);
      });
    } else {
      ticks(xmax - xmin, 8).forEach(function (offset) {
        var x = xmin + offset;
        if (x > xmax) return;
        svg('line', { x1: sx(x), x2: sx(x), y1: TOP + plotH, y2: TOP + plotH + 4, class: 'axis' }, chart);
        svg('text', { x: sx(x), y: HEIGHT - BOTTOM + 16, class: 'tick', 'text-anchor': 'middle' }, chart, seconds(x));
      });
    }
    svg('text', { x: LEFT + plotW / 2, y: HEIGHT - 6, class: 'label', 'text-anchor': 'middle' }, chart,
      options.xLabel || (categories ? '' : 'time since the start'));
    svg('text', { x: 12, y: TOP + plotH / 2, class: 'label', 'text-anchor': 'middle',
      transform: 'rotate(-90 12 ' + (TOP + plotH / 2) + ')' }, chart, options.yLabel || '');
    // Stage boundaries of a staged run (`[[harness.stages]]`), on charts over time.
    if (!categories) {
      var marked = 0;
      (report.stages || []).forEach(function (stage, index) {
        var x = stage.start_seconds;
        if (x <= 0 || x < xmin || x > xmax) return;
        svg('line', { x1: sx(x), x2: sx(x), y1: TOP, y2: TOP + plotH, class: 'stage' }, chart);
        svg('text', { x: sx(x) + 3, y: TOP + plotH - 4, class: 'stage-label' }, chart,
          'stage ' + (index + 1) + ' → ' + stage.players);
        marked += 1;
      });
      chart.setAttribute('data-stages', marked);
      // Stage boundaries of the fleet plans the instance followed (`harness.control`),
      // in this run's time: those before its start are not on the chart.
      var fleetMarked = 0;
      (report.fleet_stages || []).forEach(function (stage) {
        var x = stage.start_seconds;
        if (x <= 0 || x < xmin || x > xmax) return;
        svg('line', { x1: sx(x), x2: sx(x), y1: TOP, y2: TOP + plotH, class: 'fleet-stage' }, chart);
        svg('text', { x: sx(x) + 3, y: TOP + 12, class: 'fleet-stage-label' }, chart,
          'fleet stage ' + stage.stage + ' → ' + stage.players);
        fleetMarked += 1;
      });
      chart.setAttribute('data-fleet-stages', fleetMarked);
    }
    svg('line', { x1: LEFT, x2: LEFT, y1: TOP, y2: TOP + plotH, class: 'axis' }, chart);
    svg('line', { x1: LEFT, x2: WIDTH - RIGHT, y1: TOP + plotH, y2: TOP + plotH, class: 'axis' }, chart);
    series.forEach(function (s, index) {
      var color = s.color || COLORS[index % COLORS.length];
      var d = '', pen = false, alone = [];
      s.points.forEach(function (p, i) {
        if (p[1] === null || !isFinite(p[1])) { pen = false; return; }
        d += (pen ? 'L' : 'M') + sx(p[0]).toFixed(1) + ' ' + sy(p[1]).toFixed(1);
        var next = s.points[i + 1];
        if (!pen && (!next || next[1] === null)) alone.push(p);
        pen = true;
      });
      if (d) svg('path', { d: d, class: 'line', stroke: color, 'data-name': s.name }, chart);
      // Points with no neighbour (and every point of a category chart) get a dot.
      (categories ? s.points : alone).forEach(function (p) {
        if (p[1] === null || !isFinite(p[1])) return;
        svg('circle', { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: color }, chart);
      });
    });
    hover(figure, chart, series, categories, sx, xmin, xmax, plotW, options.unit || '');
    legend(figure, series);
    charts += 1;
    return chart;
  }

  // A vertical rule and the values of every series at the nearest x under the pointer.
  function hover(figure, chart, series, categories, sx, xmin, xmax, plotW, unit) {
    var rule = svg('line', { y1: TOP, y2: HEIGHT - BOTTOM, class: 'rule', visibility: 'hidden' }, chart);
    var tip = node('div', { class: 'tip', hidden: '' }, figure);
    chart.addEventListener('mousemove', function (event) {
      var box = chart.getBoundingClientRect();
      var x = xmin + ((event.clientX - box.left) / box.width * WIDTH - LEFT) / plotW * (xmax - xmin);
      var best = null;
      series.forEach(function (s) {
        s.points.forEach(function (p) {
          if (best === null || Math.abs(p[0] - x) < Math.abs(best - x)) best = p[0];
        });
      });
      if (best === null) return;
      rule.setAttribute('x1', sx(best));
      rule.setAttribute('x2', sx(best));
      rule.setAttribute('visibility', 'visible');
      var lines = [categories ? categories[best] : 'at ' + seconds(best)];
      series.forEach(function (s) {
        var hit = s.points.filter(function (p) { return p[0] === best; })[0];
        if (hit && hit[1] !== null) lines.push(s.name + ': ' + number(hit[1]) + unit);
      });
      tip.textContent = lines.join('\n');
      tip.hidden = false;
      tip.style.left = Math.min(event.clientX - box.left + 12, box.width - 180) + 'px';
      tip.style.top = (event.clientY - box.top + 12) + 'px';
    });
    chart.addEventListener('mouseleave', function () {
      rule.setAttribute('visibility', 'hidden');
      tip.hidden = true;
    });
  }

  // A histogram over log-spaced buckets with percentile markers.
  function distributionChart(parent, name, title, distribution, percentiles) {
    var figure = node('figure', { class: 'figure' }, parent);
    node('figcaption', {}, figure, title);
    var counts = distribution.counts || [], bounds = distribution.bounds_ms || [];
    var total = counts.reduce(function (a, b) { return a + b; }, 0);
    var chart = svg('svg', {
      class: 'chart', viewBox: '0 0 ' + WIDTH + ' ' + HEIGHT, 'data-chart': name, 'data-series': 1,
      'data-points': total > 0 ? counts.length : 0, role: 'img', 'aria-label': title
    }, figure);
    charts += 1;
    if (total === 0) {
      svg('text', { x: WIDTH / 2, y: HEIGHT / 2, class: 'label', 'text-anchor': 'middle' }, chart, 'nothing recorded');
      return chart;
    }
    var shares = counts.map(function (c) { return c / total * 100; });
    var yticks = ticks(Math.max.apply(null, shares), 5);
    var ytop = yticks[yticks.length - 1];
    var plotW = WIDTH - LEFT - RIGHT, plotH = HEIGHT - TOP - BOTTOM;
    var width = plotW / counts.length;
    var sy = function (y) { return TOP + plotH - y / ytop * plotH; };
    yticks.forEach(function (value) {
      svg('line', { x1: LEFT, x2: WIDTH - RIGHT, y1: sy(value), y2: sy(value), class: 'grid' }, chart);
      svg('text', { x: LEFT - 6, y: sy(value) + 4, class: 'tick', 'text-anchor': 'end' }, chart, number(value) + '%');
    });
    shares.forEach(function (share, index) {
      var bar = svg('rect', {
        x: LEFT + index * width + 1, y: sy(share), width: Math.max(width - 2, 1), height: TOP + plotH - sy(share),
        class: 'bar'
      }, chart);
      svg('title', {}, bar, ms(bounds[index]) + ' – ' + ms(bounds[index + 1]) + ': ' + counts[index] +
        ' (' + number(share, 1) + '%)');
    });
    var every = Math.max(1, Math.ceil(bounds.length / 9));
    bounds.forEach(function (bound, index) {
      if (index % every !== 0 && index !== bounds.length - 1) return;
      svg('text', { x: LEFT + index * width, y: HEIGHT - BOTTOM + 16, class: 'tick', 'text-anchor': 'middle' },
        chart, ms(bound));
    });
    // Where a value falls on the log-spaced axis.
    var position = function (value) {
      for (var i = 0; i + 1 < bounds.length; i++) {
        if (value <= bounds[i + 1]) {
          var low = Math.log(Math.max(bounds[i], 1e-9)), high = Math.log(bounds[i + 1]);
          var within = high > low ? (Math.log(Math.max(value, 1e-9)) - low) / (high - low) : 0;
          return LEFT + (i + Math.min(Math.max(within, 0), 1)) * width;
        }
      }
      return WIDTH - RIGHT;
    };
    ['p50', 'p90', 'p99'].forEach(function (key, index) {
      var value = percentiles && percentiles[key];
      if (!(value > 0)) return;
      var x = position(value);
      svg('line', { x1: x, x2: x, y1: TOP, y2: TOP + plotH, class: 'marker' }, chart);
      svg('text', { x: x + 3, y: TOP + 10 + index * 12, class: 'tick' }, chart, key + ' ' + ms(value));
    });
    svg('text', { x: LEFT + plotW / 2, y: HEIGHT - 6, class: 'label', 'text-anchor': 'middle' }, chart,
      'duration (log scale); ' + total + ' values');
    svg('text', { x: 12, y: TOP + plotH / 2, class: 'label', 'text-anchor': 'middle',
      transform: 'rotate(-90 12 ' + (TOP + plotH / 2) + ')' }, chart, 'share of values');
    return chart;
  }

  function table(parent, head, rows) {
    var element = node('table', {}, parent);
    var tr = node('tr', {}, node('thead', {}, element));
    head.forEach(function (cell) { node('th', {}, tr, cell); });
    var body = node('tbody', {}, element);
    rows.forEach(function (row) {
      var line = node('tr', {}, body);
      row.forEach(function (cell) { node('td', {}, line, cell === undefined ? '-' : String(cell)); });
    });
    return element;
  }

  // Per-second rate of a cumulative counter between consecutive samples.
  function rate(pick) {
    var out = [];
    for (var i = 1; i < samples.length; i++) {
      var dt = samples[i].t - samples[i - 1].t;
      var delta = pick(samples[i]) - pick(samples[i - 1]);
      out.push([samples[i].t, dt > 0 ? Math.max(delta, 0) / dt : null]);
    }
    return out;
  }
  function scenarioIndex(name) { return timeline.scenarios.indexOf(name); }

  // --- summary ---
  function summary() {
    var facts = document.getElementById('facts');
    var started = report.started_at ? new Date(report.started_at).toISOString() : '-';
    var items = [
      ['instance', report.instance], ['host', report.host], ['gateway', report.gateway],
      ['version', report.version], ['started', started], ['duration', number(report.duration_seconds, 1) + ' s'],
      ['players', 'peak ' + report.players.peak + ', target ' + report.players.target + ', started ' +
        report.players.spawned],
      ['error rate', number(report.error_rate * 100, 2) + '%'],
      ['fleet', report.fleet_target !== undefined ? report.fleet_instances + ' instances sharing ' +
        report.fleet_target + ' players' : 'standalone or alone']
    ];
    items.forEach(function (item) {
      node('dt', {}, facts, item[0]);
      node('dd', {}, facts, item[1]);
    });
    var verdicts = document.getElementById('thresholds');
    (report.thresholds || []).forEach(function (threshold) {
      node('li', { class: threshold.breached ? 'fail' : 'ok' }, verdicts,
        (threshold.breached ? 'FAIL: ' : 'ok: ') + threshold.detail);
    });
    var order = timeline.scenarios.length ? timeline.scenarios : Object.keys(report.scenarios);
    var rows = order.filter(function (name) { return report.scenarios[name]; }).map(function (name) {
      var s = report.scenarios[name];
      return [name, s.attempted, s.succeeded, s.rejected, s.failed, s.cut, s.starved, number(s.latency_ms.p50, 1),
        number(s.latency_ms.p90, 1), number(s.latency_ms.p99, 1), number(s.latency_ms.max, 1)];
    });
    table(document.getElementById('scenarios'), ['scenario', 'attempted', 'succeeded', 'rejected', 'failed', 'cut',
      'starved', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms'], rows);
    if ((report.stages || []).length) {
      node('h2', {}, document.getElementById('scenarios'), 'Stages');
      table(document.getElementById('scenarios'), ['stage', 'from', 'for', 'players', 'rates (per idle player per s)'],
        report.stages.map(function (stage, index) {
          var rates = Object.keys(stage.rates || {}).map(function (name) {
            return name + ' ' + number(stage.rates[name], 4);
          }).join(', ');
          return [index + 1, seconds(stage.start_seconds), seconds(stage.duration_seconds),
            stage.from_players + ' → ' + stage.players, rates || 'as configured'];
        }));
    }
    if ((report.fleet_stages || []).length) {
      node('h2', {}, document.getElementById('scenarios'), 'Fleet stages');
      table(document.getElementById('scenarios'),
        ['plan', 'stage', 'from', 'for', 'fleet players', 'rates (per idle player per s)'],
        report.fleet_stages.map(function (stage) {
          var rates = Object.keys(stage.rates || {}).map(function (name) {
            return name + ' ' + number(stage.rates[name], 4);
          }).join(', ');
          return [stage.plan, stage.stage, seconds(stage.start_seconds), seconds(stage.duration_seconds),
            stage.from_players + ' → ' + stage.players, rates || 'as set'];
        }));
    }
  }

  // --- charts over time ---
  function players() {
    var part = section('Players', 'Simulated players alive, by state, and the target the spawner keeps.');
    var pick = function (key) { return samples.map(function (s) { return [s.t, s[key]]; }); };
    lineChart(part, 'players', 'Players over time', { yLabel: 'players' }, [
      { name: 'alive', points: pick('alive') }, { name: 'busy', points: pick('busy') },
      { name: 'idle', points: pick('idle') }, { name: 'logging in', points: pick('logging_in') },
      { name: 'target', points: pick('target'), color: '#9ca3af' }
    ]);
  }

  function rates() {
    var part = section('Scenario rates', 'Executions started per second, by scenario (from the counts between samples).');
    var series = timeline.scenarios.map(function (name, index) {
      return { name: name, points: rate(function (s) { return s.scenarios[index] ? s.scenarios[index].attempted : 0; }) };
    });
    lineChart(part, 'rates', 'Scenario executions started per second', { yLabel: 'per second', unit: '/s' }, series);
  }

  function latencies() {
    var part = section('Latency percentiles', 'Per scenario: p50, p90 and p99 of the executions that ended in each ' +
      'interval (gaps: none ended).');
    timeline.scenarios.forEach(function (name, index) {
      var s = report.scenarios[name];
      if (!s || s.attempted === 0) return;
      var pick = function (key) {
        return samples.map(function (sample) {
          var at = sample.scenarios[index];
          return [sample.t, at && at.latency_ms ? at.latency_ms[key] : null];
        });
      };
      lineChart(part, 'latency-' + name, name + ': latency over time', { yLabel: 'ms', unit: ' ms' }, [
        { name: 'p50', points: pick('p50') }, { name: 'p90', points: pick('p90') }, { name: 'p99', points: pick('p99') }
      ]);
    });
    var matched = function (key) {
      return samples.map(function (sample) {
        return [sample.t, sample.time_to_match_ms ? sample.time_to_match_ms[key] : null];
      });
    };
    lineChart(part, 'time-to-match-over-time', 'Time to match over time', { yLabel: 'ms', unit: ' ms' }, [
      { name: 'p50', points: matched('p50') }, { name: 'p90', points: matched('p90') },
      { name: 'p99', points: matched('p99') }
    ]);
  }

  function distributions() {
    var part = section('Time to match and time to play', 'How long players waited: matchmaking join → matched, ' +
      'and join → the first echo from the game server, over the whole run.');
    var d = report.distributions || {};
    distributionChart(part, 'time-to-match', 'Time to match', d.time_to_match || {}, report.time_to_match_ms);
    distributionChart(part, 'time-to-play', 'Time to play', d.time_to_play || {}, report.time_to_play_ms);
  }

  function errors() {
    var part = section('Errors by kind', 'Failures per second by kind (429s waited out are counted under http_429 ' +
      'too), then the totals by scenario.');
    var kinds = {};
    samples.forEach(function (s) { Object.keys(s.errors || {}).forEach(function (k) { kinds[k] = true; }); });
    var total = function (s) {
      return Object.keys(s.errors || {}).reduce(function (sum, k) { return sum + s.errors[k]; }, 0);
    };
    var series = [{ name: 'all kinds', points: rate(total), color: '#111827' }].concat(
      Object.keys(kinds).sort().map(function (kind) {
        return { name: kind, points: rate(function (s) { return (s.errors || {})[kind] || 0; }) };
      }));
    lineChart(part, 'errors', 'Failures per second by kind', { yLabel: 'per second', unit: '/s' }, series);
    var rows = [];
    Object.keys(report.scenarios).forEach(function (name) {
      var byKind = report.scenarios[name].errors || {};
      Object.keys(byKind).forEach(function (kind) { rows.push([name, kind, byKind[kind]]); });
    });
    if (rows.length) table(part, ['scenario', 'kind', 'count'], rows);
    else node('p', { class: 'note' }, part, 'No errors of any kind.');
  }

  function quality() {
    var queues = report.queues || {};
    var names = Object.keys(queues).filter(function (name) { return queues[name].matched_players > 0; });
    var part = section('Match quality by queue', 'Per queue: time to match and how even its matches were (p50 / ' +
      'p90; ratings and true skill in points), then quality against the oldest ticket\'s wait (medians).');
    if (!names.length) {
      node('p', { class: 'note' }, part, 'No player of this run was matched.');
      return;
    }
    var pair = function (p) { return p ? number(p.p50) + ' / ' + number(p.p90) : '-'; };
    table(part, ['queue', 'players', 'matches', 'time to match ms', 'rating spread', 'team diff', 'worst ping ms',
      'true-skill spread'], names.map(function (name) {
      var q = queues[name];
      return [name, q.matched_players, q.matches, pair(q.time_to_match_ms), pair(q.rating_spread),
        pair(q.team_rating_diff), pair(q.worst_latency_ms), pair(q.true_skill_spread)];
    }));
    var waits = (queues[names[0]].by_wait || []).map(function (row) { return row.wait; });
    var against = function (key) {
      return names.map(function (name) {
        return {
          name: name, points: (queues[name].by_wait || []).map(function (row, index) {
            return [index, row.matches > 0 && row[key] !== null && row[key] !== undefined ? row[key] : null];
          })
        };
      });
    };
    var options = function (label) { return { x: waits, xLabel: 'oldest ticket\'s wait', yLabel: label }; };
    lineChart(part, 'quality-true-skill', 'True-skill spread of a match against wait (median)', options('points'),
      against('true_skill_spread_p50'));
    lineChart(part, 'quality-rating', 'Rating spread of a match against wait (median)', options('points'),
      against('rating_spread_p50'));
    var ping = against('worst_latency_ms_p50');
    if (ping.some(function (s) { return s.points.some(function (p) { return p[1] !== null; }); })) {
      lineChart(part, 'quality-ping', 'Worst ping in a match against wait (median)', options('ms'), ping);
    }
    var matches = names.map(function (name) {
      return { name: name, points: (queues[name].by_wait || []).map(function (row, index) { return [index, row.matches]; }) };
    });
    lineChart(part, 'quality-matches', 'Matches by the oldest ticket\'s wait', options('matches'), matches);
    var convergence = report.rating_convergence;
    if (convergence && convergence.players > 0) {
      var rho = function (v) { return v === null || v === undefined ? 'n/a (all equal)' : number(v, 2); };
      node('p', {}, part, 'Rating convergence: Spearman rank correlation of rating with true skill over ' +
        convergence.players + ' players: start ' + rho(convergence.spearman_start) + ', end ' +
        rho(convergence.spearman_end) + '.');
    }
  }

  summary();
  if (samples.length === 0) {
    node('p', { class: 'note' }, document.getElementById('charts'), 'This report has no samples over time.');
  }
  players();
  rates();
  latencies();
  distributions();
  errors();
  quality();
  document.documentElement.setAttribute('data-charts', String(charts));
  document.documentElement.setAttribute('data-rendered', 'true');
})();
