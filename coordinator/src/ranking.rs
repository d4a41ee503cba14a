//! The choice among a sweep's trials: `ranking.csv` (successful trials by Pareto tier over
//! the objectives, then by the first objective) and the accuracy panels of `pareto.svg`:
//! accuracy (or the search's `val_accuracy`, or any metric) against LUT, DSP, latency and
//! parameters, with the part's capacity dashed, the first two tiers marked and failures
//! crossed.

use hlsfarm_common::aggregate::SeedSummary;
use hlsfarm_common::results::{TrialResult, TrialStatus};
use hlsfarm_common::select::{Objective, default_objectives, metric, pareto_tiers, rank};
use plotters::prelude::*;

/// The objectives a sweep's ranking uses: the last gate's, else the default for its figures.
pub fn objectives_for(summary: &SeedSummary, given: Option<Vec<Objective>>) -> Vec<Objective> {
    given.unwrap_or_else(|| {
        let results: Vec<&TrialResult> = summary.results.iter().map(|e| &e.result).collect();
        default_objectives(&results)
    })
}

/// `ranking.csv`: rank, tier, the trial, each objective, the headline figures; the trials
/// that are not ranked (failed, or missing an objective) follow without a rank.
pub fn ranking_csv(summary: &SeedSummary, objectives: &[Objective]) -> std::io::Result<Vec<u8>> {
    let results: Vec<&TrialResult> = summary.results.iter().map(|e| &e.result).collect();
    let (ranked, left) = rank(&results, objectives);
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = ["rank", "tier", "model", "folder", "trial_key", "status"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    header.extend(objectives.iter().map(ToString::to_string));
    header.extend(
        FIGURES
            .iter()
            .filter(|f| !objectives.iter().any(|o| o.metric == **f))
            .map(|f| (*f).to_owned()),
    );
    header.push("selection".to_owned());
    w.write_record(&header).map_err(std::io::Error::other)?;
    let row = |i: usize, place: Option<(usize, u32)>| -> Vec<String> {
        let e = &summary.results[i];
        let r = &e.result;
        let num = |name: &str| metric(r, name).map(cell).unwrap_or_default();
        let mut out = vec![
            place.map(|(n, _)| n.to_string()).unwrap_or_default(),
            place.map(|(_, t)| t.to_string()).unwrap_or_default(),
            r.model.name.clone(),
            std::path::Path::new(&e.output_dir)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            r.trial_key.clone(),
            e.status.clone(),
        ];
        out.extend(objectives.iter().map(|o| num(&o.metric)));
        out.extend(
            FIGURES
                .iter()
                .filter(|f| !objectives.iter().any(|o| o.metric == **f))
                .map(|f| num(f)),
        );
        out.push(
            e.selection
                .last()
                .map(|d| match (&d.promoted_for, d.role) {
                    (Some(_), _) => "promoted".to_owned(),
                    (None, role) => format!("{role:?}").to_lowercase(),
                })
                .unwrap_or_default(),
        );
        out
    };
    for (n, (i, tier)) in ranked.iter().enumerate() {
        w.write_record(row(*i, Some((n + 1, *tier))))
            .map_err(std::io::Error::other)?;
    }
    for i in left {
        w.write_record(row(i, None))
            .map_err(std::io::Error::other)?;
    }
    w.into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// The figures every ranking row shows beside its objectives.
const FIGURES: &[&str] = &[
    "accuracy",
    "float_accuracy",
    "accuracy_drop",
    "val_accuracy",
    "parameters",
    "lut",
    "ff",
    "dsp",
    "bram",
    "latency_ns",
    "fmax_mhz",
];

fn cell(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.6}")
    }
}

/// The metric the accuracy panels plot upwards: the fixed-point accuracy on the validation
/// set, else the search's `val_accuracy`, else none.
pub fn quality_metric(summary: &SeedSummary) -> Option<&'static str> {
    ["accuracy", "val_accuracy", "score"].into_iter().find(|m| {
        summary
            .results
            .iter()
            .any(|e| metric(&e.result, m).is_some())
    })
}

/// One panel: the quality metric against `x`.
pub struct Panel {
    /// The x metric.
    pub x: &'static str,
    /// Its axis label.
    pub label: &'static str,
    /// The part's capacity of it, where the reports say.
    pub capacity: Option<f64>,
    /// (x, y, tier, failed) per trial that has both.
    pub points: Vec<(f64, f64, Option<u32>, bool)>,
}

/// The panels that have points, for the quality metric `y`, each marking its own Pareto
/// tiers (more `y`, less `x`) among the successful trials.
pub fn panels(summary: &SeedSummary, y: &str) -> Vec<Panel> {
    let results: Vec<&TrialResult> = summary.results.iter().map(|e| &e.result).collect();
    let axes: [(&'static str, &'static str); 4] = [
        ("lut", "LUT"),
        ("dsp", "DSP"),
        ("latency_ns", "latency (ns)"),
        ("parameters", "parameters"),
    ];
    axes.into_iter()
        .filter_map(|(x, label)| {
            let mut points: Vec<(f64, f64, Option<u32>, bool)> = results
                .iter()
                .filter_map(|r| {
                    Some((
                        metric(r, x)?,
                        metric(r, y)?,
                        None,
                        r.status != TrialStatus::Success,
                    ))
                })
                .collect();
            if points.is_empty() {
                return None;
            }
            let ok: Vec<usize> = (0..points.len()).filter(|&i| !points[i].3).collect();
            let objectives = [
                Objective {
                    metric: y.to_owned(),
                    maximize: true,
                },
                Objective {
                    metric: x.to_owned(),
                    maximize: false,
                },
            ];
            let values: Vec<Vec<f64>> =
                ok.iter().map(|&i| vec![points[i].1, points[i].0]).collect();
            for (k, tier) in pareto_tiers(&values, &objectives).into_iter().enumerate() {
                points[ok[k]].2 = Some(tier);
            }
            let capacity = results
                .iter()
                .filter_map(|r| {
                    let c = r.reports.csynth.as_ref()?;
                    match x {
                        "lut" => c.available.lut,
                        "dsp" => c.available.dsp,
                        _ => None,
                    }
                })
                .reduce(f64::max);
            Some(Panel {
                x,
                label,
                capacity,
                points,
            })
        })
        .collect()
}

/// Draws one panel into `area`.
pub fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
    y: &str,
    with_text: bool,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let xs = panel.points.iter().map(|p| p.0);
    let x_max = xs.clone().chain(panel.capacity).fold(1.0, f64::max) * 1.1;
    let (y_lo, y_hi) = panel
        .points
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let pad = ((y_hi - y_lo) * 0.1).max(1e-3);
    let mut builder = ChartBuilder::on(area);
    builder.margin(15);
    if with_text {
        builder
            .caption(
                format!(
                    "{y} against {} (red: front, orange: 2nd tier, x: failed{})",
                    panel.label,
                    if panel.capacity.is_some() {
                        ", dashed: the part's"
                    } else {
                        ""
                    }
                ),
                ("sans-serif", 14),
            )
            .x_label_area_size(35)
            .y_label_area_size(55);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..x_max, (y_lo - pad)..(y_hi + pad))
        .map_err(|e| err(&e))?;
    if with_text {
        chart
            .configure_mesh()
            .x_desc(panel.label)
            .y_desc(y)
            .draw()
            .map_err(|e| err(&e))?;
    }
    if let Some(cap) = panel.capacity {
        chart
            .draw_series(DashedLineSeries::new(
                [(cap, y_lo - pad), (cap, y_hi + pad)],
                6,
                4,
                RGBColor(90, 90, 200).stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
    }
    for &(x, yv, tier, failed) in &panel.points {
        if failed {
            chart
                .draw_series(std::iter::once(Cross::new((x, yv), 6, RED.stroke_width(2))))
                .map_err(|e| err(&e))?;
            continue;
        }
        let (colour, size) = match tier {
            Some(1) => (RGBColor(200, 30, 30), 6),
            Some(2) => (RGBColor(240, 150, 20), 5),
            _ => (RGBColor(150, 150, 150), 4),
        };
        chart
            .draw_series(std::iter::once(Circle::new((x, yv), size, colour.filled())))
            .map_err(|e| err(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use hlsfarm_common::aggregate::SeedEntry;
    use hlsfarm_common::results::{SearchInfo, TrialResult};
    use hlsfarm_common::select::parse_objectives;
    use hlsfarm_common::settings::Settings;

    use super::*;

    fn entry(name: &str, acc: f64, params: f64) -> SeedEntry {
        let mut r = TrialResult::noop(name, name, Settings::default());
        r.search = Some(SearchInfo {
            metrics: [
                ("val_accuracy".to_owned(), acc.into()),
                ("total_params".to_owned(), params.into()),
            ]
            .into(),
            ..SearchInfo::default()
        });
        SeedEntry::new(
            std::path::Path::new(name),
            std::path::Path::new(&format!("/out/hls_{name}")),
            r,
            false,
        )
    }

    #[test]
    fn ranking_rows_by_tier() {
        let summary = SeedSummary::new(vec![
            entry("a", 0.90, 100.0),
            entry("b", 0.95, 1000.0),
            entry("c", 0.80, 5000.0),
        ]);
        let objectives = parse_objectives("val_accuracy:max,parameters:min").unwrap();
        let csv = String::from_utf8(ranking_csv(&summary, &objectives).unwrap()).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert!(
            lines[0].starts_with(
                "rank,tier,model,folder,trial_key,status,val_accuracy:max,parameters:min"
            ),
            "{}",
            lines[0]
        );
        assert!(lines[1].starts_with("1,1,b,hls_b,"), "{csv}");
        assert!(lines[2].starts_with("2,1,a,hls_a,"), "{csv}");
        assert!(lines[3].starts_with("3,2,c,hls_c,"), "{csv}");
        assert_eq!(quality_metric(&summary), Some("val_accuracy"));
        let p = panels(&summary, "val_accuracy");
        assert_eq!(p.len(), 1, "only parameters has values");
        assert_eq!(p[0].x, "parameters");
    }
}
