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
}

static FONTS: Once = Once::new();

fn register_fonts() {
    FONTS.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
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

/// `x` with two significant digits (`63`, `0.016`, `4.1e3`).
fn significant(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let magnitude = x.abs().log10().floor() as i32;
    if !(-2..4).contains(&magnitude) {
        return format!("{x:.1e}");
    }
    let decimals = (1 - magnitude).max(0) as usize;
    format!("{x:.decimals$}")
}

/// Tick text: two significant digits on log axes; on linear axes enough decimals to tell ticks
/// `span / 10` apart.
fn tick(v: f64, log: bool, span: f64) -> String {
    if log {
        return significant(10f64.powf(v));
    }
    let decimals = (-(span / 10.0).max(1e-12).log10().floor() as i32).clamp(0, 8) as usize;
    format!("{v:.decimals$}")
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, chart: &Chart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
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
    let (y0, y1) = range(ys);
    let mut ctx = ChartBuilder::on(&root)
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
    for (i, s) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (axis(p.0, chart.log_x), axis(p.1, chart.log_y))).collect();
        ctx.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(&s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if pts.len() <= 40 {
            ctx.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| e.to_string())?;
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
    }
    for (j, (label, y)) in chart.references.iter().enumerate() {
        let color = Palette99::pick(chart.series.len() + j).to_rgba();
        let y = axis(*y, chart.log_y);
        ctx.draw_series(LineSeries::new(vec![(x0, y), (x1, y)], color.stroke_width(1)))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(1)));
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
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
    draw(BitMapBackend::new(&png, (900, 560)).into_drawing_area(), chart)
        .map_err(|e| EvalError::io("draw", &png, e))?;
    draw(SVGBackend::new(&svg, (900, 560)).into_drawing_area(), chart).map_err(|e| EvalError::io("draw", &svg, e))?;
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
        };
        let (png, svg) = save(&chart, &dir.path().join("chart")).unwrap();
        let png_bytes = std::fs::read(png).unwrap();
        assert_eq!(&png_bytes[1..4], b"PNG");
        let svg_text = std::fs::read_to_string(svg).unwrap();
        assert!(svg_text.contains("<svg") && svg_text.contains("astrocytic"));
    }
}
