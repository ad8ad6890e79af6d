use std::time::Duration;

pub fn run(duration: Duration, interval: Duration) -> anyhow::Result<()> {
    super::init_logging("warn");
    let report = super::runtime()?.block_on(async {
        let mut out = std::io::stdout();
        crate::demo::run(duration, interval, &mut out).await
    })?;
    if report.detected.is_none() {
        anyhow::bail!("the demo's block was not detected");
    }
    Ok(())
}
