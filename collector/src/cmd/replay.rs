use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::Path;

use anyhow::Context;

use crate::config::CollectorConfig;

pub fn run(input: &str, output: &str, config: Option<&Path>) -> anyhow::Result<()> {
    let detector = match config {
        Some(p) => CollectorConfig::load(p)?.detector,
        None => Default::default(),
    };
    let writer = || -> anyhow::Result<Box<dyn io::Write>> {
        Ok(if output == "-" {
            Box::new(BufWriter::new(io::stdout().lock()))
        } else {
            Box::new(BufWriter::new(File::create(output).with_context(|| format!("cannot create {output}"))?))
        })
    };
    let path = Path::new(input);
    if input != "-" && path.is_dir() {
        crate::replay::parquet::replay_tree(path, writer()?, detector).with_context(|| format!("replaying {input}"))?;
        return Ok(());
    }
    if input != "-" && crate::replay::parquet::is_parquet(path) {
        crate::replay::parquet::replay_file(path, writer()?, detector).with_context(|| format!("replaying {input}"))?;
        return Ok(());
    }
    let reader: Box<dyn io::BufRead> = if input == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(BufReader::with_capacity(
            1 << 20,
            File::open(input).with_context(|| format!("cannot open trace {input}"))?,
        ))
    };
    crate::replay::replay(reader, writer()?, detector).with_context(|| format!("replaying {input}"))?;
    Ok(())
}
