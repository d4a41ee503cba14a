//! The sweep's Pareto plot: resources (LUT, or DSP where no LUT figure exists) against
//! latency, each trial coloured by its emulation fidelity (max |diff|, green good, red bad),
//! the Pareto front drawn through the trials no other beats on both, and trials that failed
//! after synthesis marked with a cross. Written as `pareto.svg` and `pareto.png`.

use std::path::Path;

use hlsfarm_common::aggregate::SeedSummary;
use hlsfarm_common::results::TrialStatus;
use hlsfarm_common::select::Objective;
use plotters::prelude::*;

/// One trial on the plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Resources (LUT or DSP).
    pub resources: f64,
    /// Worst-case latency, cycles.
    pub latency: f64,
    /// Emulation max |diff|, when emulation ran.
    pub max_abs_diff: Option<f64>,
    /// True when the trial failed (after synthesis gave figures).
    pub failed: bool,
}

/// The points of a sweep and the resource they count (`LUT` or `DSP`); empty when no trial
/// has both a resource figure and a latency.
pub fn points(summary: &SeedSummary) -> (Vec<Point>, &'static str) {
    let has_lut = summary.results.iter().any(|e| {
        e.result
            .reports
            .csynth
            .as_ref()
            .is_some_and(|c| c.used.lut.is_some())
    });
    let label = if has_lut { "LUT" } else { "DSP" };
    let points = summary
        .results
        .iter()
        .filter_map(|e| {
            let c = e.result.reports.csynth.as_ref()?;
            let resources = if has_lut { c.used.lut? } else { c.used.dsp? };
            Some(Point {
                resources,
                latency: c.latency_worst_cycles? as f64,
                max_abs_diff: e.result.fidelity.as_ref().map(|f| f.max_abs_diff),
                failed: e.result.status != TrialStatus::Success,
            })
        })
        .collect();
    (points, label)
}

/// The successful points no other successful point beats on both axes, by resources.
pub fn front(points: &[Point]) -> Vec<(f64, f64)> {
    let mut ok: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| !p.failed)
        .map(|p| (p.resources, p.latency))
        .collect();
    ok.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut front: Vec<(f64, f64)> = Vec::new();
    for p in ok {
        if front.last().is_none_or(|last| p.1 < last.1) {
            front.push(p);
        }
    }
    front
}

fn colour(diff: Option<f64>, worst: f64) -> RGBColor {
    match diff {
        None => RGBColor(120, 120, 120),
        Some(d) => {
            let t = if worst > 0.0 {
                (d / worst).clamp(0.0, 1.0)
            } else {
                0.0
            };
            RGBColor((40.0 + 200.0 * t) as u8, (180.0 - 140.0 * t) as u8, 60)
        }
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    points: &[Point],
    label: &str,
    with_text: bool,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let x_max = points.iter().map(|p| p.resources).fold(1.0, f64::max) * 1.1;
    let y_max = points.iter().map(|p| p.latency).fold(1.0, f64::max) * 1.1;
    let worst = points
        .iter()
        .filter_map(|p| p.max_abs_diff)
        .fold(0.0, f64::max);
    let mut builder = ChartBuilder::on(root);
    builder.margin(20);
    if with_text {
        builder
            .caption(
                format!("{label} against latency (colour: emulation max |diff|, x: failed)"),
                ("sans-serif", 18),
            )
            .x_label_area_size(40)
            .y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    if with_text {
        chart
            .configure_mesh()
            .x_desc(label)
            .y_desc("latency (cycles)")
            .draw()
            .map_err(|e| err(&e))?;
    }
    chart
        .draw_series(LineSeries::new(front(points), BLACK.stroke_width(1)))
        .map_err(|e| err(&e))?;
    for p in points {
        let style = colour(p.max_abs_diff, worst);
        if p.failed {
            chart
                .draw_series(std::iter::once(Cross::new(
                    (p.resources, p.latency),
                    6,
                    RED.stroke_width(2),
                )))
                .map_err(|e| err(&e))?;
        } else {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (p.resources, p.latency),
                    5,
                    style.filled(),
                )))
                .map_err(|e| err(&e))?;
        }
    }
    Ok(())
}

/// Every panel of `pareto.svg` on one drawing: the resources-latency plot, then the quality
/// metric against each resource, two to a row.
fn draw_all<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    figure: &Figure,
    with_text: bool,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (rows, cols) = figure.grid();
    let areas = root.split_evenly((rows, cols));
    let mut next = areas.iter();
    if !figure.points.is_empty()
        && let Some(area) = next.next()
    {
        draw(area, &figure.points, figure.label, with_text)?;
    }
    if let Some(y) = figure.quality {
        for (panel, area) in figure.panels.iter().zip(next) {
            crate::ranking::draw_panel(area, panel, y, with_text)?;
        }
    }
    root.present().map_err(|e| err(&e))
}

/// What `pareto.svg` shows.
struct Figure {
    points: Vec<Point>,
    label: &'static str,
    quality: Option<&'static str>,
    panels: Vec<crate::ranking::Panel>,
}

impl Figure {
    fn new(summary: &SeedSummary) -> Figure {
        let (points, label) = points(summary);
        let quality = crate::ranking::quality_metric(summary);
        let panels = quality
            .map(|y| crate::ranking::panels(summary, y))
            .unwrap_or_default();
        Figure {
            points,
            label,
            quality,
            panels,
        }
    }

    fn count(&self) -> usize {
        self.panels.len() + usize::from(!self.points.is_empty())
    }

    fn grid(&self) -> (usize, usize) {
        let n = self.count().max(1);
        let cols = n.min(2);
        (n.div_ceil(cols), cols)
    }

    fn size(&self) -> (u32, u32) {
        match self.grid() {
            (1, 1) => (900, 600),
            (rows, cols) => (cols as u32 * 700, rows as u32 * 480),
        }
    }
}

/// Fonts tried for the PNG's text (the SVG names a font family and needs none).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        FONTS.iter().any(|path| {
            std::fs::read(path).ok().is_some_and(|bytes| {
                // register_font wants 'static bytes; the font lives for the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
        })
    })
}

/// Writes `pareto.svg` and `pareto.png` into `dir`: resources against latency where trials
/// have both, and the quality metric (accuracy, else the search's `val_accuracy`) against
/// LUT, DSP, latency and parameters, each with its Pareto tiers; returns false (writing
/// nothing) when there is nothing to plot. The plots have no text when no DejaVu font is
/// installed (Debian's `fonts-dejavu-core`, which `.ci/setup` installs).
pub fn write(summary: &SeedSummary, dir: &Path) -> Result<bool, String> {
    let figure = Figure::new(summary);
    if figure.count() == 0 {
        return Ok(false);
    }
    // Text needs a font for its layout, in both backends.
    let with_text = register_font();
    let size = figure.size();
    let svg = dir.join("pareto.svg");
    draw_all(
        SVGBackend::new(&svg, size).into_drawing_area(),
        &figure,
        with_text,
    )?;
    let png = dir.join("pareto.png");
    draw_all(
        BitMapBackend::new(&png, size).into_drawing_area(),
        &figure,
        with_text,
    )?;
    Ok(true)
}

/// `pareto.svg` in memory (for the web page's live plot), or `None` when there is nothing to
/// plot.
pub fn svg(summary: &SeedSummary) -> Result<Option<String>, String> {
    let figure = Figure::new(summary);
    if figure.count() == 0 {
        return Ok(None);
    }
    let with_text = register_font();
    let mut text = String::new();
    draw_all(
        SVGBackend::with_string(&mut text, figure.size()).into_drawing_area(),
        &figure,
        with_text,
    )?;
    Ok(Some(text))
}

/// A file of a sweep's outputs: its name and bytes.
pub type SweepFile = (&'static str, Vec<u8>);

/// A finished sweep's files, the same for one host (written into the output folder) and for
/// the cluster (uploaded under `sweeps/<id>/`): `synthesis_results.json`, `results.csv`,
/// `ranking.csv` (by `objectives`, else the default for the sweep's figures) where any trial
/// ranks, and `pareto.svg` and `pareto.png` where there is something to plot. A plot that
/// cannot be drawn is left out with the reason (second value); the tables are always there.
pub fn sweep_outputs(
    summary: &SeedSummary,
    objectives: Option<Vec<Objective>>,
) -> std::io::Result<(Vec<SweepFile>, Option<String>)> {
    let mut files = vec![
        (
            "synthesis_results.json",
            serde_json::to_vec_pretty(summary).map_err(std::io::Error::other)?,
        ),
        ("results.csv", summary.csv()?),
    ];
    let objectives = crate::ranking::objectives_for(summary, objectives);
    if !objectives.is_empty() {
        files.push((
            "ranking.csv",
            crate::ranking::ranking_csv(summary, &objectives)?,
        ));
    }
    let dir = tempfile::Builder::new().prefix("hlsfarm-plot-").tempdir()?;
    let warning = match write(summary, dir.path()) {
        Ok(true) => {
            for name in ["pareto.svg", "pareto.png"] {
                files.push((name, std::fs::read(dir.path().join(name))?));
            }
            None
        }
        Ok(false) => None,
        Err(e) => Some(format!("cannot draw the Pareto plot: {e}")),
    };
    Ok((files, warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(resources: f64, latency: f64, failed: bool) -> Point {
        Point {
            resources,
            latency,
            max_abs_diff: Some(0.1),
            failed,
        }
    }

    #[test]
    fn the_front_keeps_only_undominated_successes() {
        let points = [
            p(100.0, 50.0, false),
            p(200.0, 20.0, false),
            p(150.0, 60.0, false), // beaten by (100, 50)
            p(300.0, 20.0, false), // beaten by (200, 20)
            p(50.0, 10.0, true),   // failed: not on the front
        ];
        assert_eq!(front(&points), [(100.0, 50.0), (200.0, 20.0)]);
    }
}
