//! `hlsfarm watch`: the cluster live in the terminal (full screen): sweeps with progress and
//! ETA, workers with their trials and heartbeat age, seats, recent failures and the latest
//! queue events. It redraws when the coordinator's event stream moves and every second;
//! `q`, `Esc` or Ctrl-C quit and give the terminal back as it was.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use hlsfarm_proto::v1;
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, List, ListItem, Paragraph, Row, Table};

use crate::cli::client::{ClientArgs, connect, status_error};
use crate::view::{StatusJson, SweepJson, state_name};

/// Events kept on screen.
const EVENTS: usize = 200;

/// What the screen shows.
#[derive(Debug, Clone)]
pub struct Screen {
    /// The coordinator.
    pub url: String,
    /// The cluster.
    pub status: StatusJson,
    /// Latest queue events, newest first, as lines.
    pub events: VecDeque<String>,
    /// Why the last refresh failed, if it did.
    pub error: Option<String>,
}

/// A text progress bar: `██████░░░░ 60%`.
fn bar(s: &SweepJson, width: usize) -> String {
    let total = s.total().max(1);
    let done = s.ended();
    let filled = (done as usize * width) / total as usize;
    format!(
        "{}{} {:>3}%",
        "█".repeat(filled),
        "░".repeat(width - filled),
        done * 100 / total
    )
}

/// Draws the screen into a frame.
pub fn draw(frame: &mut Frame<'_>, screen: &Screen) {
    let s = &screen.status;
    let workers_height = (s.workers.len() as u16 + 3).clamp(4, 14);
    let sweeps_height = (s.sweeps.len() as u16 + 3).clamp(4, 14);
    let [title, sweeps, workers, lower, events, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(sweeps_height),
        Constraint::Length(workers_height),
        Constraint::Length(8),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let running: usize = s.workers.iter().map(|w| w.trials.len()).sum();
    let slots: u32 = s.workers.iter().map(|w| w.slots).sum();
    frame.render_widget(
        Paragraph::new(Line::from(format!(
            "hlsfarm watch  {}  ·  {} sweeps  ·  {} workers  ·  {running} / {slots} slots busy",
            screen.url,
            s.sweeps.len(),
            s.workers.len()
        )))
        .style(Style::default().add_modifier(Modifier::BOLD)),
        title,
    );
    draw_sweeps(frame, sweeps, s);
    draw_workers(frame, workers, s);
    let [seats, failures] =
        Layout::horizontal([Constraint::Percentage(30), Constraint::Percentage(70)]).areas(lower);
    let seat_rows = s.seats.iter().map(|x| {
        Row::new(vec![
            x.feature.clone(),
            x.in_use.to_string(),
            if x.limit == 0 {
                "unlimited".into()
            } else {
                x.limit.to_string()
            },
        ])
    });
    frame.render_widget(
        Table::new(
            seat_rows,
            [
                Constraint::Length(10),
                Constraint::Length(7),
                Constraint::Length(10),
            ],
        )
        .header(Row::new(vec!["feature", "in use", "limit"]).style(header()))
        .block(Block::bordered().title(" Seats ")),
        seats,
    );
    let failure_rows = s.recent_failures.iter().map(|f| {
        Row::new(vec![
            f.trial.chars().take(12).collect::<String>(),
            f.class.clone(),
            f.reason.clone(),
        ])
    });
    frame.render_widget(
        Table::new(
            failure_rows,
            [
                Constraint::Length(12),
                Constraint::Length(14),
                Constraint::Min(10),
            ],
        )
        .header(Row::new(vec!["trial", "class", "reason"]).style(header()))
        .block(Block::bordered().title(" Recent failures ")),
        failures,
    );
    let items: Vec<ListItem<'_>> = screen
        .events
        .iter()
        .map(|e| ListItem::new(e.as_str()))
        .collect();
    frame.render_widget(
        List::new(items).block(Block::bordered().title(" Events ")),
        events,
    );
    let help_line = match &screen.error {
        Some(e) => Line::from(format!(
            "coordinator unreachable: {e} (retrying)  ·  q quits"
        ))
        .style(Style::default().fg(Color::Red)),
        None => Line::from("q, Esc or Ctrl-C quits").style(Style::default().fg(Color::DarkGray)),
    };
    frame.render_widget(Paragraph::new(help_line), help);
}

fn header() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn draw_sweeps(frame: &mut Frame<'_>, area: Rect, s: &StatusJson) {
    let rows = s.sweeps.iter().map(|w| {
        let unfinished = w.count("queued") + w.count("leased");
        Row::new(vec![
            w.name.clone(),
            w.id.clone(),
            bar(w, 20),
            w.count("queued").to_string(),
            w.count("leased").to_string(),
            w.count("succeeded").to_string(),
            (w.count("failed") + w.count("dead")).to_string(),
            w.count("reused").to_string(),
            if unfinished == 0 {
                "done".into()
            } else {
                w.eta_text()
            },
        ])
    });
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Min(12),
                Constraint::Length(18),
                Constraint::Length(25),
                Constraint::Length(7),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Length(16),
            ],
        )
        .header(
            Row::new(vec![
                "sweep",
                "id",
                "progress",
                "queued",
                "running",
                "succeeded",
                "failed",
                "reused",
                "ETA",
            ])
            .style(header()),
        )
        .block(Block::bordered().title(" Sweeps ")),
        area,
    );
}

fn draw_workers(frame: &mut Frame<'_>, area: Rect, s: &StatusJson) {
    let rows = s.workers.iter().map(|w| {
        Row::new(vec![
            w.id.clone(),
            format!("{} / {}", w.trials.len(), w.slots),
            format!("{:.1} s", w.heartbeat_age_seconds),
            if w.draining { "draining" } else { "serving" }.to_owned(),
            w.trials
                .iter()
                .map(|t| {
                    let elapsed = t.elapsed_text();
                    format!(
                        "{}:{}{}",
                        t.trial.chars().take(8).collect::<String>(),
                        if t.stage.is_empty() {
                            "starting".to_owned()
                        } else if let Some(phase) =
                            t.phase.split(" · ").next().filter(|p| !p.is_empty())
                        {
                            format!("{} ({phase})", t.stage)
                        } else {
                            t.stage.clone()
                        },
                        if elapsed.is_empty() {
                            String::new()
                        } else {
                            format!(" {elapsed}")
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join(" "),
        ])
    });
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(28),
                Constraint::Length(8),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Min(10),
            ],
        )
        .header(
            Row::new(vec![
                "worker",
                "busy",
                "heard",
                "state",
                "trials (key:stage time of ~predicted)",
            ])
            .style(header()),
        )
        .block(Block::bordered().title(" Workers ")),
        area,
    );
}

/// One queue event as a line.
fn event_line(e: &v1::Event) -> String {
    let day_s = (e.time_unix_ms / 1000).rem_euclid(86_400);
    let time = format!(
        "{:02}:{:02}:{:02}",
        day_s / 3600,
        (day_s % 3600) / 60,
        day_s % 60
    );
    let who = [
        e.sweep_id.as_str(),
        &e.trial_key[..e.trial_key.len().min(12)],
        e.worker_id.as_str(),
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    format!("{time} UTC  {} {} {}", who, state_name(e.state), e.message)
}

enum Input {
    Quit,
    Redraw,
}

/// Restores the terminal however `watch` ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// `hlsfarm watch`.
pub async fn watch(args: &ClientArgs, sweep: Option<String>) -> anyhow::Result<i32> {
    if !std::io::stdout().is_terminal() {
        bail!(
            "hlsfarm watch draws on a terminal, and stdout is not one: use `hlsfarm status` (or `status --json`) instead"
        );
    }
    let mut client = connect(args)?;
    let request = v1::GetStatusRequest {
        include_finished: false,
    };
    let first = client
        .get_status(request)
        .await
        .map_err(|s| status_error(s, &args.coordinator))?
        .into_inner();
    let mut screen = Screen {
        url: args.coordinator.clone(),
        status: StatusJson::from(&first),
        events: VecDeque::new(),
        error: None,
    };

    // The queue's events: each one is shown and triggers a refresh.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<v1::Event>>(256);
    {
        let mut client = client.clone();
        let tx = tx.clone();
        let sweep = sweep.clone().unwrap_or_default();
        tokio::spawn(async move {
            let mut cursor = String::new();
            loop {
                let stream = client
                    .watch(v1::WatchRequest {
                        sweep_id: sweep.clone(),
                        after_cursor: cursor.clone(),
                    })
                    .await;
                if let Ok(stream) = stream {
                    let mut stream = stream.into_inner();
                    while let Ok(Some(e)) = stream.message().await {
                        cursor = e.cursor.clone();
                        if tx.send(Some(e)).await.is_err() {
                            return;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    // Keys, read on a thread of their own.
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<Input>(8);
    std::thread::spawn(move || {
        loop {
            if keys_tx.is_closed() {
                return;
            }
            match event::poll(Duration::from_millis(200)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(_) => return,
            }
            let input = match event::read() {
                Ok(TermEvent::Key(k)) if k.kind == KeyEventKind::Press => match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => Input::Quit,
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        Input::Quit
                    }
                    _ => continue,
                },
                Ok(TermEvent::Resize(..)) => Input::Redraw,
                Ok(_) => continue,
                Err(_) => return,
            };
            if keys_tx.blocking_send(input).is_err() {
                return;
            }
        }
    });

    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        terminal.draw(|f| draw(f, &screen))?;
        let mut refresh = false;
        tokio::select! {
            input = keys.recv() => match input {
                Some(Input::Quit) | None => break,
                Some(Input::Redraw) => {}
            },
            event = rx.recv() => {
                if let Some(Some(e)) = event {
                    screen.events.push_front(event_line(&e));
                    screen.events.truncate(EVENTS);
                    refresh = true;
                }
            }
            _ = tick.tick() => refresh = true,
            _ = tokio::signal::ctrl_c() => break,
        }
        if refresh {
            match client
                .get_status(v1::GetStatusRequest {
                    include_finished: false,
                })
                .await
            {
                Ok(s) => {
                    screen.status = StatusJson::from(s.get_ref());
                    screen.error = None;
                }
                Err(e) => screen.error = Some(e.message().to_owned()),
            }
        }
    }
    drop(tx);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn screen() -> Screen {
        let response = v1::GetStatusResponse {
            sweeps: vec![v1::SweepStatus {
                sweep_id: "sw-1".into(),
                name: "jets".into(),
                priority: 1,
                counts: [("queued", 2u64), ("leased", 1), ("succeeded", 7)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
                eta_seconds: Some(125.0),
                eta_sd_seconds: Some(30.0),
                submitted_unix_ms: 0,
                ..Default::default()
            }],
            workers: vec![v1::WorkerStatus {
                worker_id: "host-a-1".into(),
                hostname: "host-a".into(),
                capabilities: Some(v1::Capabilities {
                    slots: 4,
                    ..Default::default()
                }),
                trials: vec![v1::TrialInfo {
                    trial_key: "abcdef0123456789".into(),
                    sweep_id: "sw-1".into(),
                    current_stage: v1::Stage::Csynth as i32,
                    attempt: 1,
                    running_seconds: Some(65.0),
                    predicted_seconds: Some(300.0),
                    ..Default::default()
                }],
                heartbeat_age_seconds: 0.4,
                draining: true,
            }],
            seats: vec![v1::SeatStatus {
                feature: "vsynth".into(),
                in_use: 1,
                limit: 2,
            }],
            recent_failures: Vec::new(),
        };
        Screen {
            url: "http://coord:7070".into(),
            status: StatusJson::from(&response),
            events: VecDeque::from(vec!["12:00:00 sw-1 leased attempt 1".to_owned()]),
            error: None,
        }
    }

    #[test]
    fn the_screen_shows_sweeps_workers_seats_and_events() {
        let mut terminal = Terminal::new(TestBackend::new(120, 40)).expect("terminal");
        terminal.draw(|f| draw(f, &screen())).expect("draw");
        let text: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        for expected in [
            "1 / 4 slots busy",
            "jets",
            "sw-1",
            "70%",
            "2m05s ± 30s",
            "host-a-1",
            "draining",
            "abcdef01:csynth 1m05s of ~5m00s",
            "vsynth",
            "leased attempt 1",
            "q, Esc or Ctrl-C quits",
        ] {
            assert!(text.contains(expected), "`{expected}` not on the screen");
        }
    }

    #[test]
    fn the_progress_bar_counts_reused_trials_as_done() {
        let mut s = screen().status.sweeps[0].clone();
        s.counts.insert("reused".into(), 10);
        // 7 succeeded + 10 reused of 20.
        assert!(bar(&s, 20).ends_with(" 85%"), "{}", bar(&s, 20));
    }
}
