//! The loss and accuracy curves, as SVG.

use std::path::Path;

use super::Result;

/// One round's figures, for the curve.
pub struct Point {
    /// Round number.
    pub round: u64,
    /// The clients' training loss at the start of the round.
    pub train_loss: Option<f32>,
    /// Test loss of the new global model.
    pub test_loss: f32,
    /// Its test accuracy.
    pub accuracy: f32,
}

/// Writes the loss and accuracy curves to `path` (SVG).
pub fn plot(path: &Path, curve: &[Point], centralized: f32) -> Result<()> {
    use plotters::prelude::*;

    let root = SVGBackend::new(path, (800, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(300);
    let rounds = curve.last().map_or(1, |p| p.round).max(1);
    let max_loss = curve
        .iter()
        .flat_map(|p| [p.test_loss, p.train_loss.unwrap_or(0.0)])
        .fold(0.0f32, f32::max)
        .max(0.1)
        * 1.1;

    let mut loss = ChartBuilder::on(&top)
        .caption("federated averaging: loss", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(1u64..rounds, 0f32..max_loss)?;
    loss.configure_mesh()
        .x_desc("round")
        .y_desc("log loss")
        .draw()?;
    loss.draw_series(LineSeries::new(
        curve.iter().map(|p| (p.round, p.test_loss)),
        &BLUE,
    ))?
    .label("test loss")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    loss.draw_series(LineSeries::new(
        curve.iter().filter_map(|p| Some((p.round, p.train_loss?))),
        &RED,
    ))?
    .label("clients' training loss at the start of the round")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    loss.configure_series_labels().border_style(BLACK).draw()?;

    let low = curve
        .iter()
        .map(|p| p.accuracy)
        .fold(centralized, f32::min)
        .min(0.9)
        - 0.05;
    let mut accuracy = ChartBuilder::on(&bottom)
        .caption("test accuracy", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(1u64..rounds, low.max(0.0)..1f32)?;
    accuracy
        .configure_mesh()
        .x_desc("round")
        .y_desc("accuracy")
        .draw()?;
    accuracy
        .draw_series(LineSeries::new(
            curve.iter().map(|p| (p.round, p.accuracy)),
            &BLUE,
        ))?
        .label("federated")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    accuracy
        .draw_series(LineSeries::new(
            [(1, centralized), (rounds, centralized)],
            &BLACK,
        ))?
        .label("centralized, after all rounds")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    accuracy
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
