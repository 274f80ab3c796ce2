fn main() {
    use astro_eval::plot::{Chart, Series, save};
    let chart = Chart {
        title: "relative error of the astrocyte response".into(),
        x_label: "hidden neurons m".into(),
        y_label: "median relative error".into(),
        log_x: true,
        log_y: true,
        series: vec![
            Series {
                label: "layer 0".into(),
                points: vec![(64.0, 0.12), (256.0, 0.06), (1024.0, 0.03), (4096.0, 0.015)],
                errors: Some(vec![0.01, 0.005, 0.002, 0.001]),
            },
            Series {
                label: "layer 1".into(),
                points: vec![(64.0, 0.2), (256.0, 0.1), (1024.0, 0.05), (4096.0, 0.025)],
                errors: None,
            },
        ],
        references: vec![("slope -1/2".into(), 0.02)],
        y_range: None,
    };
    save(&chart, std::path::Path::new("/tmp/plotdemo/chart")).unwrap();
}
