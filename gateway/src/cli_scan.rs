//! `fivezero-gateway scan`: SunSpec discovery against a live device, and a draft profile.
//!
//! The walk and the draft are the library's ([`fivezero_gateway::sunspec`]); this module gives
//! them a [`RegisterReader`] over the same [`Session`] `read` uses (the poller's connectors
//! and `transport::read`), prints what was found and writes the draft. A draft is checked
//! with `fivezero_profiles::load_str` before it is written, and an existing file is never
//! overwritten.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use fivezero_gateway::poll::PollError;
use fivezero_gateway::poll::transport::Reply;
use fivezero_gateway::sunspec::{
    CommonInfo, Discovery, DiscoveryError, DraftSource, ReadFailure, RegisterReader, discover,
    emit, logical_devices, read_common,
};
use fivezero_profiles::Table;
use fivezero_profiles::plan::ReadRequest;

use crate::cli_read::{LinkArgs, Session, block_on};

/// `scan`'s arguments.
#[derive(Debug, Clone, Args)]
pub(crate) struct ScanArgs {
    #[command(flatten)]
    link: LinkArgs,
    /// Write a draft profile of the models found to FILE (never overwrites; the file name
    /// gives the profile id, e.g. acme-inverter.toml).
    #[arg(long, value_name = "FILE")]
    emit_profile: Option<PathBuf>,
    /// Which logical device to draft: each common model (1) starts one, numbered from 1.
    #[arg(long, value_name = "N", default_value_t = 1)]
    device: usize,
}

/// Reads holding registers through a session.
struct SessionReader<'a>(&'a mut Session);

impl RegisterReader for SessionReader<'_> {
    fn read_holding(
        &mut self,
        start: u16,
        count: u16,
    ) -> impl Future<Output = Result<Vec<u16>, ReadFailure>> {
        let req = ReadRequest {
            table: Table::Holding,
            start,
            count,
            points: Vec::new(),
        };
        async move {
            match self.0.read(&req).await {
                Ok(Ok(Reply::Words(words))) => Ok(words),
                Ok(Ok(Reply::Bits(_))) => Err(ReadFailure::Failed(
                    "bits in answer to a register read".to_owned(),
                )),
                Ok(Err(exception)) => Err(ReadFailure::Exception(exception.0)),
                Err(PollError::Timeout) => Err(ReadFailure::Timeout),
                Err(e) => Err(ReadFailure::Failed(e.to_string())),
            }
        }
    }
}

/// What the scan found.
#[derive(Debug)]
struct Found {
    discovery: Discovery,
    /// The common model's text per logical device (when it has one and it could be read).
    commons: Vec<Option<CommonInfo>>,
    /// Problems reading common models, to show.
    warnings: Vec<String>,
}

async fn scan(session: &mut Session) -> Result<Found, String> {
    let link = session.link.clone();
    let unit = session.unit;
    session
        .open()
        .await
        .map_err(|e| format!("cannot reach {link}: {e}"))?;
    let mut reader = SessionReader(session);
    let discovery = match discover(&mut reader).await {
        Ok(d) => d,
        Err(DiscoveryError::NotSunSpec { tried })
            if tried.iter().all(|(_, why)| why.starts_with("no reply")) =>
        {
            reader.0.close().await;
            return Err(format!(
                "unit {unit} on {link} did not answer within {} at 40000, 0 or 50000: check the \
                 unit id and the device's Modbus settings (or try a longer --timeout)",
                humantime::format_duration(reader.0.timeout)
            ));
        }
        Err(e) => {
            reader.0.close().await;
            return Err(format!("unit {unit} on {link}: {e}"));
        }
    };
    let mut commons = Vec::new();
    let mut warnings = Vec::new();
    for group in logical_devices(&discovery.models) {
        let common = match group.first().filter(|m| m.id == 1) {
            Some(m) => match read_common(&mut reader, m).await {
                Ok(info) => Some(info),
                Err(e) => {
                    warnings.push(format!(
                        "the common model at {} could not be read: {e}",
                        m.address
                    ));
                    None
                }
            },
            None => None,
        };
        commons.push(common);
    }
    reader.0.close().await;
    Ok(Found {
        discovery,
        commons,
        warnings,
    })
}

/// `fivezero-gateway scan`.
pub(crate) fn run(args: &ScanArgs) -> ExitCode {
    let mut stderr = std::io::stderr().lock();
    let mut session = match args.link.session() {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let found = match block_on(scan(&mut session)) {
        Ok(Ok(f)) => f,
        Ok(Err(e)) | Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if print(&mut stdout, &session, &found).is_err() {
        return ExitCode::FAILURE;
    }
    for w in &found.warnings {
        let _ = writeln!(stderr, "warning: {w}");
    }
    let Some(file) = &args.emit_profile else {
        return ExitCode::SUCCESS;
    };
    match write_draft(file, args.device, &session, &found) {
        Ok(summary) => {
            let _ = writeln!(stdout, "{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print(out: &mut impl Write, session: &Session, found: &Found) -> std::io::Result<()> {
    let d = &found.discovery;
    writeln!(
        out,
        "SunSpec map of unit {} on {}: marker \"SunS\" at {}",
        session.unit, session.link, d.base
    )?;
    for (base, why) in &d.skipped {
        writeln!(out, "  (not at {base}: {why})")?;
    }
    writeln!(
        out,
        "{:<7} {:>6}  {:<36} {:>7} {:>6}",
        "device", "model", "name", "address", "length"
    )?;
    for (k, group) in logical_devices(&d.models).iter().enumerate() {
        for m in group {
            writeln!(
                out,
                "{:<7} {:>6}  {:<36} {:>7} {:>6}",
                k + 1,
                m.id,
                m.name().unwrap_or("(unknown)"),
                m.address,
                m.length
            )?;
        }
    }
    writeln!(out, "{}", d.end)?;
    for (k, common) in found.commons.iter().enumerate() {
        if let Some(c) = common {
            writeln!(
                out,
                "device {}: manufacturer {:?}, model {:?}, version {:?}, serial {:?}",
                k + 1,
                c.manufacturer,
                c.model,
                c.version,
                c.serial
            )?;
        }
    }
    Ok(())
}

/// Emits, checks and writes the draft; the line to print.
fn write_draft(
    file: &Path,
    device: usize,
    session: &Session,
    found: &Found,
) -> Result<String, String> {
    let source = DraftSource {
        link: session.link.clone(),
        unit: session.unit,
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let common = device
        .checked_sub(1)
        .and_then(|i| found.commons.get(i))
        .and_then(Option::as_ref);
    let draft = emit(&found.discovery, device, common, &source).map_err(|e| e.to_string())?;
    if let Err(diagnostics) = fivezero_profiles::load_str(file, &draft.text) {
        let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        return Err(format!(
            "the draft would be refused, so it was not written:\n{}",
            lines.join("\n")
        ));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "{} exists; it is never overwritten: remove it or choose another name",
                    file.display()
                )
            } else {
                format!("cannot create {}: {e}", file.display())
            }
        })?;
    f.write_all(draft.text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let models: Vec<String> = draft
        .included
        .iter()
        .map(|m| format!("{} at {}", m.id, m.address))
        .collect();
    let mut summary = format!(
        "wrote {}: DRAFT profile of logical device {} of {} (models {}), {} reading points",
        file.display(),
        draft.device.0,
        draft.device.1,
        models.join(", "),
        draft.reading_points
    );
    for (m, why) in &draft.left_out {
        summary.push_str(&format!(
            "\n  left out model {} at {}: {why}",
            m.id, m.address
        ));
    }
    summary.push_str(&format!(
        "\nreview it, then: fivezero-gateway profile check {0}\n                 \
         fivezero-gateway read --profile {0} ... --unit {1}",
        file.display(),
        session.unit
    ));
    Ok(summary)
}
