//! A scenario's timeline: what the driver did and what fio saw, on one clock.
//!
//! Each scenario (or chain) view of the run's [`Reporter`](crate::report::Reporter) keeps one
//! [`Timeline`]: its clock starts when the view is made (`t = 0`, host time), and every
//! [`Event`] (a subtest starting or ending, a disk hot-removed or added, a link fault, a balloon
//! change, pause/resume, a migration, a reboot, a QMP event, a kernel finding) is recorded in
//! seconds since then. Every fio run started through `FioRun` adds a [`FioSeries`]: fio's own
//! interval logs (`--write_iops_log`, `--write_lat_log`, `--log_avg_msec=1000`), read back from
//! the guest when fio ends, per job and direction.
//!
//! fio's logs are stamped with the guest's wall clock (`--log_unix_epoch=1`), which is not the
//! host's: when fio ends, the guest's clock is read through the agent (`guest-get-time`) between
//! two readings of the host's, and the samples are moved by the difference. The error of every
//! sample's time is at most half that round trip ([`FioSeries::time_bound`], measured per run),
//! plus what the guest's clock drifted from the host's during the run (nothing under TCG unless
//! the guest was paused meanwhile). fio's own start cannot serve as the anchor: under TCG fio
//! takes 2 to 4 s from the spawn to its job's first I/O.
//!
//! With `--out DIR`, each scenario's directory gets `timeline.json` (this module's types as JSON,
//! fields documented here) and `timeline.svg` ([`render_svg`]): IOPS (read and write) and mean
//! latency per fio job against time, the events marked on the same axis, the failed step in red.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A subtest began (`text` is its name).
    SubtestStart,
    /// A subtest ended (`text` is its name; `failed` when it did not pass).
    SubtestEnd,
    /// A disk left a machine (QMP `device_del`, or removed in the guest through sysfs).
    HotRemove,
    /// A disk was plugged into a machine.
    HotAdd,
    /// A network link changed (blocked, unblocked, loss, delay, partition, heal).
    Link,
    /// A media fault injected into a disk or cleared.
    MediaFault,
    /// A balloon target set, or a balloon plugged or unplugged.
    Balloon,
    /// A power action: start, pause, resume, reboot, shutdown, crash, save, restore, migrate.
    Power,
    /// An event QEMU sent on QMP (`text` is its name and data).
    Qmp,
    /// What a watch found: a kernel splat, a service's exit, a broken invariant.
    Kernel,
    /// Anything else a scenario marks ([`crate::log::event`]).
    Note,
}

/// One thing that happened, at `t` seconds since the timeline's start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the timeline's start (host clock).
    pub t: f64,
    /// What kind of thing.
    pub kind: EventKind,
    /// The machine it happened on, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// What happened, in words.
    pub text: String,
    /// A subtest end that did not pass (drawn in red).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
}

/// One sample of a fio interval log: `t` seconds since the timeline's start, `value`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the timeline's start (fio's time, placed as [`FioSeries::started`] says).
    pub t: f64,
    /// IOPS (averaged over fio's log interval), or latency in milliseconds.
    pub v: f64,
}

/// One fio job's interval logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FioSeries {
    /// The machine fio ran on.
    pub machine: String,
    /// The device (or file) it did I/O on.
    pub device: String,
    /// fio's job number (1, 2, ... for `numjobs` > 1).
    pub job: u32,
    /// When the spawn was requested (seconds since the timeline's start).
    pub started: f64,
    /// The guest's wall clock less the host's, in seconds, measured when fio ended.
    pub guest_clock_offset: f64,
    /// Every sample's time is exact within this many seconds (half the round trip of the
    /// clock reading; see the module's doc).
    pub time_bound: f64,
    /// When the host saw fio end (seconds since the timeline's start).
    pub ended: f64,
    /// When fio wrote its report, its last act (the report's `timestamp_ms`, moved to the
    /// host's clock like the samples), if it wrote one. After it the job's IOPS are 0: the
    /// picture draws a dotted drop from the last sample to 0 there (not a sample: fio does not
    /// log the window it ended in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited: Option<f64>,
    /// fio's exit status.
    pub status: i32,
    /// Read IOPS per interval.
    pub read_iops: Vec<Sample>,
    /// Write IOPS per interval.
    pub write_iops: Vec<Sample>,
    /// Mean read latency (submission to completion) per interval, in ms.
    pub read_lat_ms: Vec<Sample>,
    /// Mean write latency per interval, in ms.
    pub write_lat_ms: Vec<Sample>,
}

impl FioSeries {
    /// `machine:device`, the job number and when the run was started.
    pub fn label(&self) -> String {
        format!("{}:{} job {} (from {:.0} s)", self.machine, self.device, self.job, self.started)
    }
}

/// A scenario's events and fio series, on one clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// The scenario (or chain).
    pub scenario: String,
    /// The host's wall clock at `t = 0`, in seconds since the Unix epoch.
    pub started_unix: f64,
    /// Every event, in the order recorded (sorted by `t` when written).
    pub events: Vec<Event>,
    /// Every fio run's series, in the order the runs ended.
    pub fio: Vec<FioSeries>,
}

/// A timeline's clock: an `Instant` and the wall-clock time it stands for.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    instant: Instant,
    unix: f64,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::now()
    }
}

impl Clock {
    /// A clock starting now.
    pub fn now() -> Clock {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        Clock { instant: Instant::now(), unix }
    }
    /// Seconds from the start to `at` (negative before it).
    pub fn seconds(&self, at: Instant) -> f64 {
        match at.checked_duration_since(self.instant) {
            Some(d) => d.as_secs_f64(),
            None => -(self.instant - at).as_secs_f64(),
        }
    }
    /// Seconds from the start to the wall-clock time `unix` (QEMU's event timestamps).
    pub fn seconds_unix(&self, unix: f64) -> f64 {
        unix - self.unix
    }
    /// The wall-clock time of the start.
    pub fn unix(&self) -> f64 {
        self.unix
    }
}

/// fio's interval log lines (`msec, value, direction, bs, offset[, prio]`; with
/// `log_unix_epoch`, `msec` is the guest's Unix time in ms): (ms, value,
/// direction: 0 read, 1 write, 2 trim). Lines that do not parse are skipped.
pub fn parse_fio_log(text: &str) -> Vec<(u64, f64, u8)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(',').map(str::trim);
            let ms = f.next()?.parse().ok()?;
            let v = f.next()?.parse().ok()?;
            let dir = f.next()?.parse().ok()?;
            Some((ms, v, dir))
        })
        .collect()
}

impl FioSeries {
    /// Adds fio's `_iops` log (`lat` false) or `_lat` log (`lat` true: values in ns) of this job,
    /// its times in the guest's Unix ms; `zero` is the guest's Unix time (s) at the timeline's
    /// start.
    pub fn add_log(&mut self, text: &str, lat: bool, zero: f64) {
        for (ms, v, dir) in parse_fio_log(text) {
            let t = ms as f64 / 1000.0 - zero;
            let (v, into) = match (lat, dir) {
                (false, 0) => (v, &mut self.read_iops),
                (false, 1) => (v, &mut self.write_iops),
                (true, 0) => (v / 1e6, &mut self.read_lat_ms),
                (true, 1) => (v / 1e6, &mut self.write_lat_ms),
                _ => continue,
            };
            into.push(Sample { t, v });
        }
    }
}

/// The series of one fio run from its logs as `for f in P_iops.*.log P_lat.*.log; do echo "== $f";
/// cat "$f"; done` prints them (`prefix` is P): one per job, each a copy of `template` (machine,
/// device, times, status, clock offset) with its samples; `zero` is the guest's Unix time (s) at
/// the timeline's start.
pub fn series_from_logs(
    text: &str,
    prefix: &str,
    template: &FioSeries,
    zero: f64,
) -> Vec<FioSeries> {
    let mut jobs: std::collections::BTreeMap<u32, FioSeries> = Default::default();
    let mut section: Option<(u32, bool)> = None;
    let mut body = String::new();
    let mut flush = |section: Option<(u32, bool)>, body: &mut String| {
        if let Some((job, lat)) = section {
            let series = jobs.entry(job).or_insert_with(|| FioSeries { job, ..template.clone() });
            series.add_log(body, lat, zero);
        }
        body.clear();
    };
    for line in text.lines() {
        if let Some(file) = line.strip_prefix("== ") {
            flush(section.take(), &mut body);
            // P_iops.N.log or P_lat.N.log
            let rest = file.strip_prefix(prefix).unwrap_or(file);
            let lat = rest.starts_with("_lat.");
            let job = rest.split('.').nth(1).and_then(|n| n.parse().ok()).unwrap_or(1);
            section = Some((job, lat));
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    flush(section, &mut body);
    jobs.into_values().collect()
}

impl Timeline {
    /// The last time anything happened (an event, a sample, a fio run's end).
    pub fn end(&self) -> f64 {
        let events = self.events.iter().map(|e| e.t);
        let fio = self.fio.iter().flat_map(|f| {
            std::iter::once(f.ended).chain(f.write_iops.iter().chain(&f.read_iops).map(|s| s.t))
        });
        events.chain(fio).fold(0.0, f64::max)
    }

    /// Each subtest's span: (name, start, end, failed), in the order they began.
    pub fn subtests(&self) -> Vec<(String, f64, f64, bool)> {
        let mut open: Vec<(String, f64)> = Vec::new();
        let mut spans = Vec::new();
        for e in &self.events {
            match e.kind {
                EventKind::SubtestStart => open.push((e.text.clone(), e.t)),
                EventKind::SubtestEnd => {
                    if let Some(i) = open.iter().rposition(|(n, _)| *n == e.text) {
                        let (name, start) = open.remove(i);
                        spans.push((name, start, e.t, e.failed));
                    }
                }
                _ => {}
            }
        }
        // A subtest still open (the run was cut) ends at the timeline's end.
        let end = self.end();
        spans.extend(open.into_iter().map(|(n, s)| (n, s, end, false)));
        spans.sort_by(|a, b| a.1.total_cmp(&b.1));
        spans
    }

    /// The events sorted by time (stable).
    pub fn sort(&mut self) {
        self.events.sort_by(|a, b| a.t.total_cmp(&b.t));
    }

    /// Writes `timeline.json` and `timeline.svg` into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        use anyhow::Context;
        let mut sorted = self.clone();
        sorted.sort();
        let json = dir.join("timeline.json");
        std::fs::write(&json, serde_json::to_string_pretty(&sorted)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let svg = dir.join("timeline.svg");
        std::fs::write(&svg, render_svg(&sorted)?)
            .with_context(|| format!("writing {}", svg.display()))?;
        Ok(())
    }
}

/// Event kinds drawn as marks on the plot (subtests are drawn as bands; QMP events of kinds
/// the driver's own actions already mark are left out to keep the marks readable).
fn marked(e: &Event) -> bool {
    match e.kind {
        EventKind::SubtestStart | EventKind::SubtestEnd | EventKind::Note => false,
        EventKind::Qmp => !QMP_UNMARKED.iter().any(|n| e.text.starts_with(n)),
        _ => true,
    }
}

/// QMP events not marked on the plot (too frequent, or the echo of an action marked already).
const QMP_UNMARKED: &[&str] =
    &["RTC_CHANGE", "NIC_RX_FILTER_CHANGED", "BALLOON_CHANGE", "VSERPORT_CHANGE", "MIGRATION"];

/// The timeline as an SVG picture: IOPS (top) and mean latency (bottom) of every fio job
/// against time, solid for writes and dashed for reads; subtests as bands (the failed one red),
/// events as vertical lines with their text.
pub fn render_svg(tl: &Timeline) -> anyhow::Result<String> {
    use plotters::prelude::*;
    let end = (tl.end() * 1.02).max(1.0);
    let marks: Vec<&Event> = tl.events.iter().filter(|e| marked(e)).collect();
    let subtests = tl.subtests();
    let series: Vec<&FioSeries> = tl.fio.iter().collect();
    let max_of = |pick: &dyn Fn(&FioSeries) -> [&Vec<Sample>; 2]| {
        series.iter().flat_map(|f| pick(f).into_iter().flatten()).map(|s| s.v).fold(0.0, f64::max)
    };
    let iops_max = (max_of(&|f| [&f.read_iops, &f.write_iops]) * 1.15).max(1.0);
    let lat_max = (max_of(&|f| [&f.read_lat_ms, &f.write_lat_ms]) * 1.15).max(0.1);
    let (w, h) = (1200u32, 820u32);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        let e = |x: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing the timeline: {x:?}");
        root.fill(&WHITE).map_err(e)?;
        let (top, rest) = root.split_vertically(360);
        let (bottom, strip) = rest.split_vertically(260);
        let palette = [
            RGBColor(31, 119, 180),
            RGBColor(44, 160, 44),
            RGBColor(148, 103, 189),
            RGBColor(255, 127, 14),
            RGBColor(140, 86, 75),
            RGBColor(23, 190, 207),
        ];
        let panels: [(&DrawingArea<_, _>, &str, f64, bool); 2] = [
            (&top, "IOPS (fio, per 1 s)", iops_max, false),
            (&bottom, "mean latency (ms)", lat_max, true),
        ];
        for (k, (area, ylabel, ymax, lat)) in panels.into_iter().enumerate() {
            let mut chart = ChartBuilder::on(area)
                .caption(
                    if k == 0 { format!("{}: timeline", tl.scenario) } else { String::new() },
                    ("sans-serif", 18),
                )
                .margin(8)
                .margin_right(20)
                .x_label_area_size(40)
                .y_label_area_size(64)
                .build_cartesian_2d(0f64..end, 0f64..ymax)
                .map_err(e)?;
            chart
                .configure_mesh()
                .x_desc("seconds since the scenario's start")
                .y_desc(ylabel)
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(e)?;
            // Subtests as bands: alternating grey, the failed one red.
            for (i, (_, s, t, failed)) in subtests.iter().enumerate() {
                let fill = match (*failed, i % 2) {
                    (true, _) => RED.mix(0.25),
                    (false, 0) => BLACK.mix(0.04),
                    (false, _) => BLACK.mix(0.09),
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(*s, 0.0), (t.max(*s + 0.05), ymax)],
                        fill.filled(),
                    )))
                    .map_err(e)?;
            }
            for (i, f) in series.iter().enumerate() {
                let color = palette[i % palette.len()];
                let (r, wr) = match lat {
                    false => (&f.read_iops, &f.write_iops),
                    true => (&f.read_lat_ms, &f.write_lat_ms),
                };
                for (dir, points) in [("write", wr), ("read", r)] {
                    if points.is_empty() {
                        continue;
                    }
                    // Reads dashed and lighter, writes solid.
                    let shade = if dir == "write" { color.to_rgba() } else { color.mix(0.55) };
                    let style = ShapeStyle::from(&shade).stroke_width(2);
                    // fio's end: a dotted drop from its last sample to 0 (see `exited`).
                    if let (Some(x), Some(last)) = (f.exited, points.last()) {
                        if x >= last.t {
                            let drop = vec![(last.t, last.v), (x, 0.0)];
                            let thin = ShapeStyle::from(&shade).stroke_width(1);
                            chart
                                .draw_series(DashedLineSeries::new(drop, 2, 3, thin))
                                .map_err(e)?;
                            chart
                                .draw_series(std::iter::once(Cross::new((x, 0.0), 5, thin)))
                                .map_err(e)?;
                        }
                    }
                    let line: Vec<(f64, f64)> = points.iter().map(|s| (s.t, s.v)).collect();
                    let drawn = if dir == "write" {
                        chart.draw_series(LineSeries::new(line, style)).map_err(e)?
                    } else {
                        chart.draw_series(DashedLineSeries::new(line, 6, 4, style)).map_err(e)?
                    };
                    if k == 0 {
                        let label = format!("{} {dir}", f.label());
                        drawn.label(label).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], shade.stroke_width(2))
                        });
                    }
                }
            }
            // Events: a vertical line each, coloured by kind.
            for m in &marks {
                let color = mark_color(m.kind);
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(m.t, 0.0), (m.t, ymax)],
                        color.mix(0.6).stroke_width(1),
                    )))
                    .map_err(e)?;
            }
            if k == 0 && !series.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .label_font(("sans-serif", 12))
                    .draw()
                    .map_err(e)?;
            }
        }
        // The strip below: subtest names and event texts, rotated, at their times.
        let x_of = |t: f64| 72 + ((t / end) * f64::from(w - 72 - 20)) as i32;
        let font = ("sans-serif", 11).into_font().transform(FontTransform::Rotate90);
        // A text too close to one drawn already would overlap: it is left out (its line stays).
        // Drawn first: failed steps, then the driver's actions, then subtests, then QMP's.
        let mut texts: Vec<(u8, f64, String, RGBColor)> = Vec::new();
        for (name, s, _, failed) in &subtests {
            let (rank, color) = if *failed { (0, RED) } else { (2, RGBColor(90, 90, 90)) };
            texts.push((rank, *s, format!("▶ {}", clip(name, 60)), color));
        }
        for m in &marks {
            let who = m.machine.as_deref().map(|n| format!("{n}: ")).unwrap_or_default();
            let rank = if m.kind == EventKind::Qmp { 3 } else { 1 };
            texts.push((rank, m.t, format!("│ {who}{}", clip(&m.text, 60)), mark_color(m.kind)));
        }
        texts.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut drawn: Vec<i32> = Vec::new();
        for (_, t, text, color) in texts {
            let x = x_of(t);
            if drawn.iter().all(|d| (d - x).abs() >= 12) {
                drawn.push(x);
                strip.draw(&Text::new(text, (x, 4), font.color(&color))).map_err(e)?;
            }
        }
        if series.is_empty() {
            top.draw(&Text::new("no fio runs", (90, 60), ("sans-serif", 14).into_font()))
                .map_err(e)?;
        }
        root.present().map_err(e)?;
    }
    Ok(out)
}

/// The colour of an event's mark: red for what a watch found, orange for a disk leaving or
/// coming, blue for the network, purple for power actions, grey for QMP's own events.
fn mark_color(kind: EventKind) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    match kind {
        EventKind::Kernel => RGBColor(220, 0, 0),
        EventKind::HotRemove | EventKind::HotAdd | EventKind::MediaFault => RGBColor(230, 110, 0),
        EventKind::Link => RGBColor(0, 90, 200),
        EventKind::Power | EventKind::Balloon => RGBColor(130, 50, 160),
        _ => RGBColor(110, 110, 110),
    }
}

/// At most `n` characters of the first line of `text`.
fn clip(text: &str, n: usize) -> String {
    let first = text.lines().next().unwrap_or_default();
    match first.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &first[..i]),
        None => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: f64, kind: EventKind, text: &str, failed: bool) -> Event {
        Event { t, kind, machine: Some("target".into()), text: text.into(), failed }
    }

    fn synthetic() -> Timeline {
        let mut a = FioSeries {
            machine: "vm1".into(),
            device: "/dev/nvme1n1".into(),
            job: 1,
            started: 2.0,
            ended: 9.0,
            exited: Some(5.5),
            status: 1,
            ..FioSeries::default()
        };
        // The guest's clock at the timeline's start: 1000 s (its Unix ms 1001000 is t = 1 s).
        let zero = 1000.0;
        a.add_log("1003000, 120, 1, 4096, 0\n1004000, 130, 1, 4096, 0\n1005000, 0, 1, 4096, 0\n1003000, 15, 0, 4096, 0\n", false, zero);
        a.add_log("1003000, 2500000, 1, 4096, 0\n1004000, 3000000, 1, 4096, 0\n", true, zero);
        let mut b = a.clone();
        b.machine = "vm2".into();
        Timeline {
            scenario: "synthetic <&>".into(),
            started_unix: 0.0,
            events: vec![
                ev(1.0, EventKind::SubtestStart, "run fio", false),
                ev(3.0, EventKind::SubtestEnd, "run fio", false),
                ev(3.0, EventKind::SubtestStart, "hot remove NVMe disk0 <QMP>", false),
                ev(4.5, EventKind::HotRemove, "disk disk0 removed (device_del)", false),
                ev(4.8, EventKind::Qmp, "DEVICE_DELETED {\"device\":\"disk0\"}", false),
                ev(5.0, EventKind::SubtestEnd, "hot remove NVMe disk0 <QMP>", true),
            ],
            fio: vec![a, b],
        }
    }

    #[test]
    fn fio_logs_become_samples_on_the_host_clock_with_a_bound() {
        let t = synthetic();
        let f = &t.fio[0];
        assert_eq!(
            f.write_iops.iter().map(|s| (s.t, s.v)).collect::<Vec<_>>(),
            [(3.0, 120.0), (4.0, 130.0), (5.0, 0.0)]
        );
        assert_eq!(f.read_iops.len(), 1);
        assert_eq!(f.write_lat_ms[0].v, 2.5, "ns to ms");
        assert!(parse_fio_log("garbage\n\n1, x, 1\n").is_empty());
    }

    /// Real interval logs of fio 3.33 (Debian 12) and 3.38 (nixpkgs), the seed's randrw job for
    /// 3 s with `log_avg_msec=1000` and `log_unix_epoch=1` (`tools/testdata/capture_fio.sh`).
    #[test]
    fn captured_logs_of_both_fio_versions_parse() {
        for (v, iops, lat) in [
            (
                "3.33",
                include_str!("tools/testdata/fio-3.33_randrw_iops.1.log"),
                include_str!("tools/testdata/fio-3.33_randrw_lat.1.log"),
            ),
            (
                "3.38",
                include_str!("tools/testdata/fio-3.38_randrw_iops.1.log"),
                include_str!("tools/testdata/fio-3.38_randrw_lat.1.log"),
            ),
        ] {
            let text = format!("== /tmp/p_iops.1.log\n{iops}== /tmp/p_lat.1.log\n{lat}");
            let first = parse_fio_log(iops)[0].0 as f64 / 1000.0;
            let s = series_from_logs(&text, "/tmp/p", &FioSeries::default(), first - 1.0);
            assert_eq!(s.len(), 1, "fio {v}: one job");
            let s = &s[0];
            for (what, samples) in [
                ("read IOPS", &s.read_iops),
                ("write IOPS", &s.write_iops),
                ("read latency", &s.read_lat_ms),
                ("write latency", &s.write_lat_ms),
            ] {
                assert!(samples.len() >= 2, "fio {v}: {what}: {samples:?}");
                assert!(samples.iter().all(|x| x.v > 0.0), "fio {v}: {what}: {samples:?}");
                // Once a second, from about 1 s after the first: times are Unix ms.
                assert!((samples[0].t - 1.0).abs() < 0.1, "fio {v}: {what}: {samples:?}");
                assert!(samples.windows(2).all(|w| (w[1].t - w[0].t - 1.0).abs() < 0.1));
            }
            assert!(s.read_lat_ms.iter().all(|x| x.v < 1000.0), "fio {v}: ns became ms");
        }
    }

    #[test]
    fn logs_of_two_jobs_become_two_series() {
        let text = "== /tmp/p_iops.1.log\n1000, 50, 1, 4096, 0\n== /tmp/p_iops.2.log\n\
                    1000, 70, 1, 4096, 0\n2000, 0, 1, 4096, 0\n== /tmp/p_lat.2.log\n\
                    1000, 1000000, 1, 4096, 0\n";
        let template =
            FioSeries { machine: "vm1".into(), started: 1.0, ended: 4.0, ..FioSeries::default() };
        // The guest's Unix time at the timeline's start is -1 s: its 1000 ms is t = 2 s.
        let s = series_from_logs(text, "/tmp/p", &template, -1.0);
        assert_eq!(
            s.iter().map(|s| (s.job, s.write_iops.len())).collect::<Vec<_>>(),
            [(1, 1), (2, 2)]
        );
        assert_eq!(s[1].write_lat_ms, [Sample { t: 2.0, v: 1.0 }]);
        assert_eq!(s[1].machine, "vm1");
    }

    #[test]
    fn subtests_pair_their_starts_and_ends_and_the_failed_one_is_marked() {
        let spans = synthetic().subtests();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[1], ("hot remove NVMe disk0 <QMP>".to_string(), 3.0, 5.0, true));
    }

    #[test]
    fn the_svg_shows_the_series_the_events_and_the_failed_step_and_the_json_round_trips() {
        let t = synthetic();
        let svg = render_svg(&t).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for want in [
            "vm1:/dev/nvme1n1 job 1 (from 2 s) write",
            "vm2:/dev/nvme1n1 job 1 (from 2 s) read",
            "IOPS",
        ] {
            assert!(svg.contains(want), "{want} missing");
        }
        // Text is escaped; the removal is marked; the failed step's band is red.
        assert!(svg.contains("hot remove NVMe disk0 &lt;QMP&gt;"), "escaped subtest name");
        assert!(svg.contains("target: disk disk0 removed"));
        assert!(svg.contains("DEVICE_DELETED"));
        assert!(svg.contains("#FF0000"), "a red band or mark");
        let dir = tempfile::tempdir().unwrap();
        t.write(dir.path()).unwrap();
        let back: Timeline = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("timeline.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(back, t);
        assert!(dir.path().join("timeline.svg").exists());
    }

    #[test]
    fn an_empty_timeline_still_draws() {
        let svg = render_svg(&Timeline { scenario: "none".into(), ..Timeline::default() }).unwrap();
        assert!(svg.contains("no fio runs"));
    }
}
