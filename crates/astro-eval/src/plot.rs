//! Line charts as PNG and SVG (plotters; text drawn with the embedded DejaVu Sans font so the PNGs
//! render the same on any machine, without system font libraries).

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::EvalError;

/// One line (optionally with ±error bars).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (x, y) points, in drawing order.
    pub points: Vec<(f64, f64)>,
    /// Half-width of an error bar per point (same length as `points`), if any.
    pub errors: Option<Vec<f64>>,
}

/// A chart of several series.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
    /// Horizontal reference lines (label, y).
    pub references: Vec<(String, f64)>,
    /// Fixed y range (e.g. 0 to 1 for an accuracy); unset: fitted to the data.
    pub y_range: Option<(f64, f64)>,
}

static FONTS: Once = Once::new();

fn register_fonts() {
    FONTS.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Tableau's ten categorical colours: distinct on white and for most colour-blind readers, unlike
/// plotters' `Palette99`, whose second colour is a pale green that a lone marker all but hides.
const COLOURS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn colour(i: usize) -> RGBAColor {
    match COLOURS.get(i) {
        Some(&(r, g, b)) => RGBColor(r, g, b).to_rgba(),
        None => Palette99::pick(i).to_rgba(),
    }
}

fn axis(v: f64, log: bool) -> f64 {
    if log { v.max(1e-300).log10() } else { v }
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let spread = hi - lo;
    // Equal values (e.g. two cells at the same accuracy) get a visible band around them instead of a
    // zero-height axis whose ticks all print the same number.
    let pad = if spread > 1e-9 * hi.abs().max(lo.abs()).max(1.0) { spread * 0.06 } else { 0.05 * hi.abs().max(1.0) };
    (lo - pad, hi + pad)
}

/// `x` with `digits` significant digits (2: `63`, `0.016`, `4.1e3`; 3: `70800`, `1.26e6`).
fn significant(x: f64, digits: i32) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let magnitude = x.abs().log10().floor() as i32;
    if !(-2..digits + 3).contains(&magnitude) {
        let mantissa = (digits - 1).max(0) as usize;
        return format!("{x:.mantissa$e}");
    }
    if magnitude >= digits {
        // Round to `digits` significant digits and print as an integer.
        let unit = 10f64.powi(magnitude + 1 - digits);
        return format!("{}", ((x / unit).round() * unit) as i64);
    }
    let decimals = (digits - 1 - magnitude).max(0) as usize;
    format!("{x:.decimals$}")
}

/// Tick text: significant digits on log axes (three when the axis spans less than a decade, so that
/// neighbouring ticks differ); on linear axes enough decimals to tell ticks `span / 10` apart.
fn tick(v: f64, log: bool, span: f64) -> String {
    if log {
        return significant(10f64.powf(v), if span < 1.0 { 3 } else { 2 });
    }
    let decimals = (-(span / 10.0).max(1e-12).log10().floor() as i32).clamp(0, 8) as usize;
    format!("{v:.decimals$}")
}

/// Width of the legend panel right of the chart for these labels, in pixels.
fn legend_width(chart: &Chart) -> u32 {
    let longest =
        chart.series.iter().map(|s| &s.label).chain(chart.references.iter().map(|r| &r.0)).map(|l| l.chars().count());
    (longest.max().unwrap_or(0) as u32 * 6 + 48).clamp(120, 520)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, chart: &Chart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    // The legend gets its own panel right of the plot, so that it never hides a line or a point.
    let (width, _) = root.dim_in_pixel();
    let (plot_area, legend_area) = root.split_horizontally(width.saturating_sub(legend_width(chart)));
    let xs = chart.series.iter().flat_map(|s| s.points.iter().map(|p| axis(p.0, chart.log_x)));
    let ys = chart
        .series
        .iter()
        .flat_map(|s| {
            s.points.iter().enumerate().flat_map(move |(i, p)| {
                let e = s.errors.as_ref().map_or(0.0, |e| e[i]);
                [p.1 - e, p.1 + e]
            })
        })
        .chain(chart.references.iter().map(|r| r.1))
        .filter(|v| !chart.log_y || *v > 0.0)
        .map(|v| axis(v, chart.log_y));
    let (x0, x1) = range(xs);
    let (y0, y1) = match chart.y_range {
        Some((lo, hi)) => (axis(lo, chart.log_y), axis(hi, chart.log_y)),
        None => range(ys),
    };
    let mut ctx = ChartBuilder::on(&plot_area)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .x_label_formatter(&|v| tick(*v, chart.log_x, x1 - x0))
        .y_label_formatter(&|v| tick(*v, chart.log_y, y1 - y0))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    let mut legend: Vec<(String, RGBAColor, bool)> = Vec::new();
    for (i, s) in chart.series.iter().enumerate() {
        let color = colour(i);
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (axis(p.0, chart.log_x), axis(p.1, chart.log_y))).collect();
        ctx.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2))).map_err(|e| e.to_string())?;
        // A series of one or two points is a scatter (one cell per point): large markers.
        let radius = if pts.len() <= 2 { 6 } else { 3 };
        if pts.len() <= 40 {
            ctx.draw_series(pts.iter().map(|&p| Circle::new(p, radius, color.filled()))).map_err(|e| e.to_string())?;
        }
        if let Some(errors) = &s.errors {
            let bars = s.points.iter().zip(errors).map(|(p, e)| {
                let x = axis(p.0, chart.log_x);
                ErrorBar::new_vertical(
                    x,
                    axis(p.1 - e, chart.log_y),
                    axis(p.1, chart.log_y),
                    axis(p.1 + e, chart.log_y),
                    color.stroke_width(1),
                    6,
                )
            });
            ctx.draw_series(bars).map_err(|e| e.to_string())?;
        }
        legend.push((s.label.clone(), color, pts.len() <= 2));
    }
    for (j, (label, y)) in chart.references.iter().enumerate() {
        let color = colour(chart.series.len() + j);
        let y = axis(*y, chart.log_y);
        ctx.draw_series(LineSeries::new(vec![(x0, y), (x1, y)], color.stroke_width(1))).map_err(|e| e.to_string())?;
        legend.push((label.clone(), color, false));
    }
    // The legend panel: one row per series, its colour as a line (or a marker for scatters).
    let row = 20;
    let top = 48;
    for (k, (label, color, marker)) in legend.iter().enumerate() {
        let y = top + k as i32 * row;
        if *marker {
            legend_area.draw(&Circle::new((14, y), 5, color.filled())).map_err(|e| e.to_string())?;
        } else {
            legend_area
                .draw(&PathElement::new(vec![(4, y), (24, y)], color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
        }
        legend_area
            .draw(&Text::new(label.clone(), (32, y - 7), ("sans-serif", 13).into_font().color(&BLACK)))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Writes `<stem>.png` and `<stem>.svg`; returns both paths.
pub fn save(chart: &Chart, stem: &Path) -> Result<(PathBuf, PathBuf), EvalError> {
    register_fonts();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    if let Some(dir) = stem.parent() {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::io("create", dir, e))?;
    }
    // The plot keeps 900 × 560 pixels; the legend panel widens the image.
    let size = (900 + legend_width(chart), 560);
    draw(BitMapBackend::new(&png, size).into_drawing_area(), chart).map_err(|e| EvalError::io("draw", &png, e))?;
    draw(SVGBackend::new(&svg, size).into_drawing_area(), chart).map_err(|e| EvalError::io("draw", &svg, e))?;
    Ok((png, svg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_get_a_visible_range() {
        let (lo, hi) = range([0.9994375, 0.9994375].into_iter());
        assert!(lo < 0.9994375 && hi > 0.9994375 && hi - lo >= 0.05, "{lo} … {hi}");
        let span = hi - lo;
        assert_ne!(tick(lo, false, span), tick(lo + span / 2.0, false, span));
        let (lo, hi) = range([2.0, 3.0].into_iter());
        assert!((lo - 1.94).abs() < 1e-12 && (hi - 3.06).abs() < 1e-12);
    }

    #[test]
    fn log_ticks_within_a_decade_keep_three_digits() {
        // 10^5.1 = 125,893: two digits would print 1.3e5, one tick away from 10^5.05 = 112,202 → 1.1e5.
        assert_eq!(tick(5.1, true, 0.4), "126000");
        assert_eq!(tick(5.05, true, 0.4), "112000");
        assert_eq!(tick(4.85, true, 0.4), "70800");
        assert_eq!(tick(2.0, true, 3.0), "100");
        assert_eq!(tick(-1.0, true, 3.0), "0.10");
        assert_eq!(significant(4096.0, 2), "4100");
        assert_eq!(significant(1.6e-3, 2), "1.6e-3");
    }

    #[test]
    fn writes_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let chart = Chart {
            title: "error against m".into(),
            x_label: "hidden neurons m".into(),
            y_label: "relative error".into(),
            log_x: true,
            log_y: true,
            series: vec![Series {
                label: "astrocytic".into(),
                points: vec![(64.0, 0.12), (256.0, 0.06), (1024.0, 0.03)],
                errors: Some(vec![0.01, 0.005, 0.002]),
            }],
            references: vec![("softmax".into(), 0.02)],
            y_range: None,
        };
        let (png, svg) = save(&chart, &dir.path().join("chart")).unwrap();
        let png_bytes = std::fs::read(png).unwrap();
        assert_eq!(&png_bytes[1..4], b"PNG");
        let svg_text = std::fs::read_to_string(svg).unwrap();
        assert!(svg_text.contains("<svg") && svg_text.contains("astrocytic"));
    }
}
