//! Operator commands (SPEC §6): `worker replay …` and `worker dead-letters list|show`. Each exits
//! non-zero on failure.

use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use shared::dead_letters;
use shared::ids::ThreadId;
use shared::replay::{ReplayRequest, Replayer, Selection};

use crate::Settings;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Re-drive retained messages from JetStream (e.g. after a model-provider outage).
    Replay(ReplayArgs),
    /// Inspect the dead letters.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
}

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["thread", "since", "dead_letters"])))]
pub struct ReplayArgs {
    /// Every retained message of this thread.
    #[arg(long)]
    pub thread: Option<String>,
    /// Every retained message stored at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// With --since: only messages stored before this time (RFC 3339).
    #[arg(long, requires = "since")]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Every dead letter not re-driven yet.
    #[arg(long)]
    pub dead_letters: bool,
    /// Only report what would be re-driven.
    #[arg(long)]
    pub dry_run: bool,
    /// Also re-drive messages that were already processed.
    #[arg(long)]
    pub force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DeadLettersCommand {
    /// One line per dead letter: id, thread id, message id, attempts, reason.
    List {
        /// Also list dead letters that were already re-driven.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one dead letter, including each failed attempt.
    Show { id: uuid::Uuid },
}

pub async fn run(command: &Command, settings: &Settings) -> anyhow::Result<()> {
    let db = shared::db::connect_and_migrate(&settings.database).await?;
    match command {
        Command::Replay(args) => replay(args, settings, &db).await,
        Command::DeadLetters(DeadLettersCommand::List { all, limit, json }) => {
            let letters = dead_letters::list(&db, *all, *limit)
                .await
                .context("Failed to read the dead letters")?;
            if *json {
                println!("{}", serde_json::to_string(&letters)?);
            } else {
                println!("ID\tTHREAD\tMESSAGE\tATTEMPTS\tREASON");
                for letter in &letters {
                    println!(
                        "{}\t{}\t{}\t{}\t{}{}",
                        letter.id,
                        letter.thread_id,
                        letter.message_id,
                        letter.attempts,
                        letter.reason,
                        if letter.replayed_at.is_some() {
                            " (replayed)"
                        } else {
                            ""
                        }
                    );
                }
            }
            Ok(())
        }
        Command::DeadLetters(DeadLettersCommand::Show { id }) => {
            let letter = dead_letters::get(&db, *id)
                .await
                .context("Failed to read the dead letter")?
                .with_context(|| format!("no dead letter with id {id}"))?;
            println!("{}", serde_json::to_string_pretty(&letter)?);
            Ok(())
        }
    }
}

async fn replay(args: &ReplayArgs, settings: &Settings, db: &sqlx::PgPool) -> anyhow::Result<()> {
    let selection = match (&args.thread, args.since, args.dead_letters) {
        (Some(thread), None, false) => Selection::Thread(
            ThreadId::parse(thread.as_str()).map_err(|e| anyhow::anyhow!("--thread: {e}"))?,
        ),
        (None, Some(since), false) => Selection::Window {
            since,
            until: args.until,
        },
        (None, None, true) => Selection::DeadLetters,
        _ => anyhow::bail!("choose one of --thread, --since or --dead-letters"),
    };
    let nats = shared::jetstream::connect(&settings.nats, "worker-replay").await?;
    let jetstream = shared::jetstream::context(nats.clone(), Duration::from_secs(10));
    let (inbound, _) = shared::jetstream::ensure_streams(&jetstream, &settings.nats).await?;
    let subjects = settings.nats.subjects();
    let replayer = Replayer {
        jetstream: &jetstream,
        inbound: &inbound,
        db,
        subjects: &subjects,
    };
    let request = ReplayRequest {
        selection,
        dry_run: args.dry_run,
        force: args.force,
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} replaying [{bar:40}] {pos}/{len} messages")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let summary = replayer
        .run(&request, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .await;
    bar.finish_and_clear();
    let summary = summary?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        for item in &summary.items {
            println!(
                "{:?}\t{}\tseq {}\t{}\t{:?}{}",
                item.action,
                item.thread_id,
                item.in_seq,
                item.message_id,
                item.state,
                item.new_seq
                    .map(|seq| format!(" → seq {seq}"))
                    .unwrap_or_default()
            );
        }
        println!("{}", summary.describe());
    }
    nats.flush().await.context("Failed to flush NATS")?;
    Ok(())
}
