//! The report's charts, as SVG text: grouped bars with 95 % interval whiskers, and
//! distributions (box, whiskers and every repetition as a dot) per category.
//!
//! Drawn with `plotters` and its SVG backend only. Without the `ttf` or `ab_glyph` features
//! plotters measures text with its built-in estimate (0.7 em per byte), which is all an SVG
//! needs: the backend writes `<text>` elements with `text-anchor` and the viewer lays the
//! glyphs out, so no font library is linked and nothing is read from the system. Long labels
//! get more room than the estimate asks for.
//!
//! Box plots are drawn from rectangles and paths rather than plotters' `Boxplot`, whose
//! whiskers reach `q1 − 1.5·IQR` and `q3 + 1.5·IQR` even where no run was that fast or slow:
//! here whiskers end at the fastest and slowest repetition, quartiles are type 7 (as in the
//! tables), and with the handful of repetitions a sweep makes every run is shown as a dot.
//!
//! A series keeps its colour in every chart ([`Series::color`] indexes one palette), so a
//! backend reads the same across the report. A spread over more than a factor [`LOG_SPAN`]
//! puts a distribution on a log axis, with ticks at 1, 2 and 5 of each decade.

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::format;

/// Categorical palette (Tableau 10): distinguishable, and readable by most colour-blind readers.
pub(crate) const PALETTE: [(u8, u8, u8); 10] = [
    (0x4e, 0x79, 0xa7),
    (0xf2, 0x8e, 0x2b),
    (0xe1, 0x57, 0x59),
    (0x76, 0xb7, 0xb2),
    (0x59, 0xa1, 0x4f),
    (0xed, 0xc9, 0x48),
    (0xb0, 0x7a, 0xa1),
    (0xff, 0x9d, 0xa7),
    (0x9c, 0x75, 0x5f),
    (0xba, 0xb0, 0xac),
];

/// Max / min of a distribution beyond which its axis is logarithmic.
pub(crate) const LOG_SPAN: f64 = 30.0;

const FONT: &str = "sans-serif";
const WIDTH: u32 = 960;
const HEIGHT: u32 = 400;
// Plotters' SVG backend writes `font-size` as the size asked for divided by 1.24; these give
// 16, 12 and 13 px text.
const TITLE_SIZE: f64 = 19.8;
const LABEL_SIZE: f64 = 14.9;
const DESC_SIZE: f64 = 16.1;
const INK: RGBColor = RGBColor(0x33, 0x33, 0x33);

#[derive(Debug, thiserror::Error)]
#[error("drawing the chart `{chart}`: {message}")]
pub(crate) struct PlotError {
    pub chart: String,
    pub message: String,
}

/// One bar: a value and, where it has one, its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bar {
    pub value: f64,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
}

/// A named series, one entry per category (`None`: nothing to draw there).
#[derive(Debug, Clone)]
pub(crate) struct Series<T> {
    pub name: String,
    /// Index into [`PALETTE`] (wrapping).
    pub color: usize,
    pub values: Vec<Option<T>>,
}

/// A grouped bar chart: categories along x, one bar per series in each.
pub(crate) struct BarChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub categories: &'a [String],
    pub series: &'a [Series<Bar>],
    /// The values are fractions, shown as percentages on a 0–100 % axis.
    pub percent: bool,
}

/// A distribution chart: categories along x, one box per series in each, from raw samples.
pub(crate) struct DistributionChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub categories: &'a [String],
    pub series: &'a [Series<Vec<f64>>],
}

/// One labelled point of a trade-off chart.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Point {
    pub label: String,
    pub x: f64,
    /// A fraction, shown as a percentage.
    pub y: f64,
    /// Drawn filled; hollow otherwise.
    pub pass: bool,
    /// Index into [`PALETTE`] (wrapping): the backend's colour elsewhere in the report.
    pub color: usize,
}

/// A scatter of labelled points: a speed-up along x (1 marked), a relative change along y,
/// and a dashed line where `y` may not go beyond.
pub(crate) struct TradeoffChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub points: &'a [Point],
    pub threshold: Option<f64>,
}

fn color(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// The CSS colour of series index `i`, for legends drawn outside a chart.
pub(crate) fn css_color(i: usize) -> String {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn fail(chart: &str) -> impl Fn(String) -> PlotError + '_ {
    move |message| PlotError { chart: chart.to_string(), message }
}

/// Width the legend needs for `names`: swatch, gap and the estimated text.
fn legend_width(names: &[&str]) -> u32 {
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0) as u32;
    (longest * 7 + 40).clamp(90, 280)
}

/// Draws the legend, top to bottom, in `area`.
fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, entries: &[(&str, usize)], top: i32) -> Result<(), String> {
    let style = TextStyle::from((FONT, DESC_SIZE).into_font()).color(&INK).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (name, c)) in entries.iter().enumerate() {
        let y = top + 22 * i as i32;
        area.draw(&Rectangle::new([(8, y - 6), (20, y + 6)], color(*c).filled())).map_err(|e| e.to_string())?;
        area.draw(&Text::new(name.to_string(), (26, y), style.clone())).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Category names under the x axis at `anchors` (the axis point of each category): level when
/// they fit, else turned to read upwards, ending just below the axis.
fn category_labels<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    anchors: &[(i32, i32)],
    labels: &[String],
    level: bool,
) -> Result<(), String> {
    let font = (FONT, LABEL_SIZE).into_font();
    let style = if level {
        TextStyle::from(font).color(&INK).pos(Pos::new(HPos::Center, VPos::Top))
    } else {
        TextStyle::from(font.transform(FontTransform::Rotate270)).color(&INK).pos(Pos::new(HPos::Right, VPos::Center))
    };
    for (label, &(x, y)) in labels.iter().zip(anchors) {
        root.draw(&Text::new(label.clone(), (x, y + 8), style.clone())).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Adds a `<title>` (what a screen reader and a hover say) and a class to plotters' `<svg>`.
fn finish(svg: String, title: &str) -> String {
    let mut escaped = String::with_capacity(title.len());
    for c in title.chars() {
        match c {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            c => escaped.push(c),
        }
    }
    match svg.find('>') {
        Some(end) if svg.starts_with("<svg") => {
            format!("{} class=\"plot\" role=\"img\"><title>{escaped}</title>{}", &svg[..end], &svg[end + 1..])
        }
        _ => svg,
    }
}

/// Room under the x axis for the category labels: rotated when they would not fit side by side.
fn x_labels_fit(categories: &[String], plot_width: u32) -> bool {
    let per = plot_width as f64 / categories.len().max(1) as f64;
    let longest = categories.iter().map(|c| c.chars().count()).max().unwrap_or(0) as f64;
    longest * 7.0 < per - 6.0
}

/// The grouped bar chart `chart` as an SVG document.
pub(crate) fn bars(chart: &BarChart<'_>) -> Result<String, PlotError> {
    let e = fail(chart.title);
    let names: Vec<&str> = chart.series.iter().map(|s| s.name.as_str()).collect();
    let legend_w = legend_width(&names);
    let fits = x_labels_fit(chart.categories, WIDTH - legend_w - 80);
    let longest = chart.categories.iter().map(|c| c.chars().count()).max().unwrap_or(0) as u32;
    let x_area = if fits { 48 } else { (longest * 7 + 56).min(240) };
    let height = HEIGHT + x_area.saturating_sub(48);

    let mut top = 0.0f64;
    for s in chart.series {
        for b in s.values.iter().flatten() {
            top = top.max(b.value).max(b.hi.unwrap_or(b.value));
        }
    }
    let y_max = if chart.percent {
        1.05
    } else if top > 0.0 {
        top * 1.12
    } else {
        1.0
    };
    let n = chart.categories.len();
    let k = chart.series.len().max(1);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let (plot, side) = root.split_horizontally(WIDTH - legend_w);
        let mut c = ChartBuilder::on(&plot)
            .caption(chart.title, (FONT, TITLE_SIZE).into_font().color(&INK))
            .margin(12)
            .x_label_area_size(x_area)
            .y_label_area_size(68)
            .build_cartesian_2d(categories_axis(n), Axis { lo: 0.0, hi: y_max, ticks: nice_ticks(0.0, y_max, 8) })
            .map_err(|x| e(x.to_string()))?;
        let categories = chart.categories;
        let percent = chart.percent;
        let y_fmt = move |y: &f64| if percent { format!("{}%", tick_label(y * 100.0)) } else { tick_label(*y) };
        draw_mesh(&mut c, &y_fmt, chart.x_label, chart.y_label).map_err(&e)?;

        let slot = 0.8 / k as f64;
        for (j, s) in chart.series.iter().enumerate() {
            let fill = color(s.color);
            for (i, b) in s.values.iter().enumerate() {
                let Some(b) = b else { continue };
                let x0 = i as f64 - 0.4 + slot * j as f64;
                let (x0, x1) = (x0 + slot * 0.06, x0 + slot * 0.94);
                c.draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x1, b.value)], fill.filled()))).map_err(|x| e(x.to_string()))?;
                // The top edge again as a line, so that a bar of 0 still shows (against a
                // missing bar: no runs at all).
                c.draw_series(std::iter::once(PathElement::new(vec![(x0, b.value), (x1, b.value)], fill.stroke_width(2)))).map_err(|x| e(x.to_string()))?;
                if let (Some(lo), Some(hi)) = (b.lo, b.hi) {
                    let mid = (x0 + x1) / 2.0;
                    let cap = (x1 - x0) * 0.15;
                    for line in [vec![(mid, lo), (mid, hi)], vec![(mid - cap, lo), (mid + cap, lo)], vec![(mid - cap, hi), (mid + cap, hi)]] {
                        c.draw_series(std::iter::once(PathElement::new(line, INK.stroke_width(1)))).map_err(|x| e(x.to_string()))?;
                    }
                }
            }
        }
        let y0 = c.y_range().start;
        let anchors: Vec<(i32, i32)> = (0..n).map(|i| c.backend_coord(&(i as f64, y0))).collect();
        category_labels(&root, &anchors, categories, fits).map_err(&e)?;
        let entries: Vec<(&str, usize)> = chart.series.iter().map(|s| (s.name.as_str(), s.color)).collect();
        legend(&side, &entries, 48).map_err(&e)?;
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(finish(svg, chart.title))
}

/// A linear axis with the ticks given: categories at 0, 1, 2…, or round values chosen here.
/// (Plotters' own `f64` axis picks its ticks, and its key-point wrapper has no label
/// formatter for `f64`.)
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = limit.1 - limit.0;
        if span == 0 || self.hi == self.lo {
            return limit.1;
        }
        limit.0 + (span as f64 * (v - self.lo) / (self.hi - self.lo) + 1e-3).floor() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Light mesh lines would only add noise between round ticks.
        if hint.weight().allow_light_points() { Vec::new() } else { self.ticks.clone() }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// The axes every chart draws alike: horizontal grid lines only, labels in the house font.
/// The x labels are left empty: category names are drawn by `category_labels`, since
/// plotters can only turn text clockwise, which puts a long name across the axis.
fn draw_mesh<DB: DrawingBackend>(
    c: &mut ChartContext<'_, DB, Cartesian2d<Axis, Axis>>,
    y_fmt: &dyn Fn(&f64) -> String,
    x_desc: &str,
    y_desc: &str,
) -> Result<(), String> {
    c.configure_mesh()
        .disable_x_mesh()
        .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
        .axis_style(INK)
        .y_label_style((FONT, LABEL_SIZE).into_font().color(&INK))
        .x_label_formatter(&|_: &f64| String::new())
        .y_label_formatter(y_fmt)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style((FONT, DESC_SIZE).into_font().color(&INK))
        .draw()
        .map_err(|x| x.to_string())
}

fn categories_axis(n: usize) -> Axis {
    Axis { lo: -0.5, hi: n as f64 - 0.5, ticks: (0..n).map(|i| i as f64).collect() }
}

/// Type 7 quantile of sorted `v` (numpy's default).
fn quantile(v: &[f64], q: f64) -> f64 {
    let h = (v.len() - 1) as f64 * q;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    v[lo] + (h - lo as f64) * (v[hi] - v[lo])
}

/// Ticks at 1, 2 and 5 of each decade between `lo` and `hi` (both > 0).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi * 10.0 {
        for m in [1.0, 2.0, 5.0] {
            let t = decade * m;
            if t >= lo && t <= hi {
                out.push(t);
            }
        }
        decade *= 10.0;
    }
    out
}

/// The distribution chart `chart` as an SVG document.
pub(crate) fn distribution(chart: &DistributionChart<'_>) -> Result<String, PlotError> {
    let e = fail(chart.title);
    let names: Vec<&str> = chart.series.iter().map(|s| s.name.as_str()).collect();
    let legend_w = legend_width(&names);
    let fits = x_labels_fit(chart.categories, WIDTH - legend_w - 80);
    let longest = chart.categories.iter().map(|c| c.chars().count()).max().unwrap_or(0) as u32;
    let x_area = if fits { 48 } else { (longest * 7 + 56).min(240) };
    let height = HEIGHT + x_area.saturating_sub(48);

    let all: Vec<f64> = chart.series.iter().flat_map(|s| s.values.iter().flatten().flatten().copied()).filter(|x| x.is_finite()).collect();
    let (min, max) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    if all.is_empty() {
        return Err(e("no samples".into()));
    }
    let log = min > 0.0 && max / min > LOG_SPAN;
    // On a log axis values are drawn as log10: plotters' own log axis places ticks at powers
    // of ten only, too few for a span of two decades.
    let t = |y: f64| if log { y.log10() } else { y };
    let (y_lo, y_hi, ticks) = if log {
        let (lo, hi) = (min / 1.25, max * 1.25);
        (lo.log10(), hi.log10(), log_ticks(lo, hi).into_iter().map(f64::log10).collect::<Vec<_>>())
    } else {
        let pad = (max - min).max(max.abs() * 0.05).max(1e-9) * 0.1;
        let lo = (min - pad).max(0.0);
        (lo, max + pad, Vec::new())
    };
    let n = chart.categories.len();
    let k = chart.series.len().max(1);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let (plot, side) = root.split_horizontally(WIDTH - legend_w);
        let x_range = categories_axis(n);
        let mut builder = ChartBuilder::on(&plot);
        builder.caption(chart.title, (FONT, TITLE_SIZE).into_font().color(&INK)).margin(12).x_label_area_size(x_area).y_label_area_size(68);
        let y_range = Axis { lo: y_lo, hi: y_hi, ticks: if log { ticks } else { nice_ticks(y_lo, y_hi, 8) } };
        let mut c = builder.build_cartesian_2d(x_range, y_range).map_err(|x| e(x.to_string()))?;
        let categories = chart.categories;
        let y_fmt = move |y: &f64| tick_label(if log { 10f64.powf(*y) } else { *y });
        let y_desc = if log { format!("{} (log scale)", chart.y_label) } else { chart.y_label.to_string() };
        draw_mesh(&mut c, &y_fmt, chart.x_label, &y_desc).map_err(&e)?;

        let slot = 0.8 / k as f64;
        for (j, s) in chart.series.iter().enumerate() {
            let col = color(s.color);
            for (i, samples) in s.values.iter().enumerate() {
                let Some(samples) = samples else { continue };
                let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
                if v.is_empty() {
                    continue;
                }
                v.sort_by(f64::total_cmp);
                let x0 = i as f64 - 0.4 + slot * j as f64;
                let (bx0, bx1) = (x0 + slot * 0.2, x0 + slot * 0.8);
                let mid = (bx0 + bx1) / 2.0;
                let (q1, med, q3) = (quantile(&v, 0.25), quantile(&v, 0.5), quantile(&v, 0.75));
                let (lo, hi) = (v[0], v[v.len() - 1]);
                let draw = |c: &mut ChartContext<'_, _, _>, el| c.draw_series(std::iter::once(el)).map(|_| ()).map_err(|x| e(x.to_string()));
                draw(&mut c, PathElement::new(vec![(mid, t(lo)), (mid, t(q1))], col.stroke_width(1)))?;
                draw(&mut c, PathElement::new(vec![(mid, t(q3)), (mid, t(hi))], col.stroke_width(1)))?;
                c.draw_series(std::iter::once(Rectangle::new([(bx0, t(q1)), (bx1, t(q3))], col.mix(0.25).filled()))).map_err(|x| e(x.to_string()))?;
                c.draw_series(std::iter::once(Rectangle::new([(bx0, t(q1)), (bx1, t(q3))], col.stroke_width(1)))).map_err(|x| e(x.to_string()))?;
                draw(&mut c, PathElement::new(vec![(bx0, t(med)), (bx1, t(med))], col.stroke_width(2)))?;
                for end in [lo, hi] {
                    let w = (bx1 - bx0) * 0.25;
                    draw(&mut c, PathElement::new(vec![(mid - w, t(end)), (mid + w, t(end))], col.stroke_width(1)))?;
                }
                // Dots spread across the box, in repetition order, so ties stay visible.
                let m = samples.len().max(2) as f64;
                let dots = samples.iter().enumerate().filter(|(_, y)| y.is_finite()).map(|(r, &y)| {
                    let x = bx0 + (bx1 - bx0) * (0.15 + 0.7 * r as f64 / (m - 1.0));
                    Circle::new((x, t(y)), 2, col.filled())
                });
                c.draw_series(dots).map_err(|x| e(x.to_string()))?;
            }
        }
        let y0 = c.y_range().start;
        let anchors: Vec<(i32, i32)> = (0..n).map(|i| c.backend_coord(&(i as f64, y0))).collect();
        category_labels(&root, &anchors, categories, fits).map_err(&e)?;
        let entries: Vec<(&str, usize)> = chart.series.iter().map(|s| (s.name.as_str(), s.color)).collect();
        legend(&side, &entries, 48).map_err(&e)?;
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(finish(svg, chart.title))
}

/// The trade-off chart `chart` as an SVG document.
pub(crate) fn tradeoff(chart: &TradeoffChart<'_>) -> Result<String, PlotError> {
    let e = fail(chart.title);
    let xs = chart.points.iter().map(|p| p.x).chain([1.0]);
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let pad = ((x_hi - x_lo) * 0.1).max(0.05);
    let (x_lo, x_hi) = ((x_lo - pad).max(0.0), x_hi + pad * 2.5);
    let ys = chart.points.iter().map(|p| p.y).chain([0.0]).chain(chart.threshold);
    let (y_lo, y_hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let pad = ((y_hi - y_lo) * 0.1).max(0.002);
    let (y_lo, y_hi) = (y_lo - pad, y_hi + pad);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT + 60)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let mut c = ChartBuilder::on(&root)
            .caption(chart.title, (FONT, TITLE_SIZE).into_font().color(&INK))
            .margin(12)
            .x_label_area_size(56)
            .y_label_area_size(68)
            .build_cartesian_2d(Axis { lo: x_lo, hi: x_hi, ticks: nice_ticks(x_lo, x_hi, 8) }, Axis { lo: y_lo, hi: y_hi, ticks: nice_ticks(y_lo, y_hi, 8) })
            .map_err(|x| e(x.to_string()))?;
        c.configure_mesh()
            .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
            .axis_style(INK)
            .label_style((FONT, LABEL_SIZE).into_font().color(&INK))
            .x_label_formatter(&|x: &f64| format!("{}×", tick_label(*x)))
            .y_label_formatter(&|y: &f64| format!("{}%", tick_label(y * 100.0)))
            .x_desc(chart.x_label)
            .y_desc(chart.y_label)
            .axis_desc_style((FONT, DESC_SIZE).into_font().color(&INK))
            .draw()
            .map_err(|x| e(x.to_string()))?;
        let line = |c: &mut ChartContext<'_, _, _>, from: (f64, f64), to: (f64, f64), dashed: bool| -> Result<(), PlotError> {
            let n = if dashed { 40 } else { 1 };
            for i in 0..n {
                if dashed && i % 2 == 1 {
                    continue;
                }
                let at = |f: f64| (from.0 + (to.0 - from.0) * f, from.1 + (to.1 - from.1) * f);
                let seg = vec![at(i as f64 / n as f64), at((i + 1) as f64 / n as f64)];
                c.draw_series(std::iter::once(PathElement::new(seg, INK.stroke_width(1)))).map_err(|x| e(x.to_string()))?;
            }
            Ok(())
        };
        line(&mut c, (1.0, y_lo), (1.0, y_hi), false)?;
        if let Some(t) = chart.threshold {
            line(&mut c, (x_lo, t), (x_hi, t), true)?;
        }
        for p in chart.points {
            let ink = color(p.color);
            let style = if p.pass { ink.filled() } else { ink.stroke_width(2) };
            let font = (FONT, LABEL_SIZE).into_font().color(&INK).pos(Pos::new(HPos::Left, VPos::Center));
            let mark = EmptyElement::at((p.x, p.y)) + Circle::new((0, 0), 6, style) + Text::new(p.label.clone(), (10, 0), font);
            c.draw_series(std::iter::once(mark)).map_err(|x| e(x.to_string()))?;
        }
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(finish(svg, chart.title))
}

/// A tick's value as people write round numbers: `40`, `2.5`, `0.05`, never `40.0`.
fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    // Ticks are round, but arrive through sums and powers with float noise: keep 6 digits.
    let scale = 10f64.powi(5 - v.abs().log10().floor() as i32);
    let rounded = (v * scale).round() / scale;
    if rounded.abs() >= 1e6 || rounded.abs() < 1e-4 { format::sig(rounded, 3) } else { format!("{rounded}") }
}

/// About `n` round tick values (1, 2 or 5 times a power of ten apart) covering `[lo, hi]`.
fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n.max(1) as f64;
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|s| *s >= raw).unwrap_or(10.0 * p);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_7_quantiles_match_numpy() {
        // numpy.percentile([1, 2, 3, 4, 10], [25, 50, 75]) = [2, 3, 4]
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!((quantile(&v, 0.25), quantile(&v, 0.5), quantile(&v, 0.75)), (2.0, 3.0, 4.0));
        // numpy.percentile([1, 2, 3, 4], 25) = 1.75
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.25), 1.75);
    }

    #[test]
    fn log_ticks_are_1_2_5_per_decade_within_the_range() {
        assert_eq!(log_ticks(0.8, 60.0), vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0]);
    }

    #[test]
    fn tick_labels_are_written_as_round_numbers() {
        assert_eq!(tick_label(40.0), "40");
        assert_eq!(tick_label(0.1 + 0.2), "0.3");
        assert_eq!(tick_label(10f64.powf(2f64.log10())), "2");
        assert_eq!(tick_label(0.0), "0");
    }

    #[test]
    fn nice_ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
    }

    #[test]
    fn long_category_names_turn_to_read_upwards_below_the_axis() {
        let categories: Vec<String> = (0..12).map(|i| format!("a_rather_long_scenario_name_{i}")).collect();
        let series = vec![Series { name: "cpu".into(), color: 0, values: (0..12).map(|i| Some(Bar { value: i as f64 + 1.0, lo: None, hi: None })).collect() }];
        let svg = bars(&BarChart { title: "t", x_label: "scenario", y_label: "ms", categories: &categories, series: &series, percent: false }).unwrap();
        let label = svg.split("<text").find(|t| t.contains("a_rather_long_scenario_name_0")).unwrap();
        assert!(label.contains("rotate(270") && label.contains("text-anchor=\"end\""), "{label}");
    }

    #[test]
    fn a_chart_is_one_svg_element_with_its_title_and_bars() {
        let categories = vec!["short".to_string(), "long".to_string()];
        let series = vec![Series { name: "cpu <fp32>".into(), color: 0, values: vec![Some(Bar { value: 2.0, lo: Some(1.5), hi: Some(2.5) }), None] }];
        let svg =
            bars(&BarChart { title: "latency & co", x_label: "scenario", y_label: "ms", categories: &categories, series: &series, percent: false }).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
        assert!(svg.contains("<title>latency &amp; co</title>"));
        assert!(svg.contains("cpu &lt;fp32&gt;"));
        assert!(!svg.contains("NaN"));
    }
}
