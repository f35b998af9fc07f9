//! The simulated world behind `streamlog simulate` and `serve --demo`: universities whose
//! AI agents compete in arenas, follow curricula and train, turned into a stream of events.
//!
//! Architecture invariant: the generator is pure — no clock, no IO, one seeded RNG — so a
//! seed always gives the same stream, and the tests can check the stream's invariants
//! (rounds numbered 1..n between a start and an end, totals that add up, …). Pacing and
//! publishing belong to the caller.

mod catalog;
mod competition;

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

use catalog::{CURRICULA, MODELS, UNIVERSITIES};
use competition::Competition;

/// One generated event, before the publisher gives it an idempotency id.
#[derive(Debug, Clone, PartialEq)]
pub struct SimEvent {
    pub channels: Vec<String>,
    pub event_type: &'static str,
    pub data: Value,
}

impl SimEvent {
    /// The event as `POST /api/v1/events` takes it, with its idempotency `id`.
    pub fn to_publish(&self, id: String) -> Value {
        json!({
            "channels": self.channels,
            "event_type": self.event_type,
            "data": self.data,
            "id": id,
        })
    }
}

/// Each arena has its own agents, so two competitions never share one.
const AGENTS_PER_ARENA: usize = 4;

/// What happens next, and how often: competition steps (rounds above all) dominate, then
/// agent statuses, training samples, and progress reports.
#[derive(Clone, Copy)]
enum Happening {
    CompetitionStep,
    AgentStatus,
    TrainingData,
    AgentProgress,
    CurriculumProgress,
}

const MIX: [(Happening, u32); 5] = [
    (Happening::CompetitionStep, 50),
    (Happening::AgentStatus, 20),
    (Happening::TrainingData, 15),
    (Happening::AgentProgress, 8),
    (Happening::CurriculumProgress, 7),
];

struct Agent {
    id: String,
    university: &'static str,
    arena: usize,
    model: &'static str,
    version: String,
    elo: i32,
    /// Between competitions an agent trains or idles.
    training: bool,
    competition: Option<String>,
    cpu_pct: f64,
    mem_mb: u32,
    reports: u64,
    step: u64,
    loss: f64,
    reward_mean: f64,
    curriculum: usize,
    module: usize,
    percent: u32,
}

pub struct World {
    rng: StdRng,
    arena_ids: Vec<String>,
    /// The competition running in each arena, if any.
    running: Vec<Option<Competition>>,
    agents: Vec<Agent>,
    next_competition: u64,
    /// Arenas take competition steps in turn, so every arena moves at the same pace.
    next_arena: usize,
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

impl World {
    /// A world of `arenas` arenas (at least one), each with its own agents.
    pub fn new(seed: u64, arenas: usize) -> Self {
        let arenas = arenas.max(1);
        let mut rng = StdRng::seed_from_u64(seed);
        let agents = (0..arenas * AGENTS_PER_ARENA)
            .map(|i| Agent {
                id: format!("agent-{}", i + 1),
                university: UNIVERSITIES[i % UNIVERSITIES.len()],
                arena: i / AGENTS_PER_ARENA,
                model: MODELS[rng.random_range(0..MODELS.len())],
                version: format!("1.{}.{}", rng.random_range(0..8), rng.random_range(0..20)),
                elo: rng.random_range(1350..1650),
                training: rng.random_bool(0.5),
                competition: None,
                cpu_pct: round_to(rng.random_range(20.0..80.0), 1),
                mem_mb: rng.random_range(8..64) * 128,
                reports: 0,
                step: 0,
                loss: rng.random_range(0.8..2.5),
                reward_mean: rng.random_range(-5.0..0.0),
                curriculum: i % CURRICULA.len(),
                module: 0,
                percent: 0,
            })
            .collect();
        // Competition ids start from a seed-derived base: runs with different seeds rarely
        // reuse one.
        let next_competition = rng.random_range(1..1000) * 1000 + 1;
        Self {
            rng,
            arena_ids: (1..=arenas).map(|i| format!("a{i}")).collect(),
            running: (0..arenas).map(|_| None).collect(),
            agents,
            next_competition,
            next_arena: 0,
        }
    }

    pub fn next_event(&mut self) -> SimEvent {
        match self.pick_happening() {
            Happening::CompetitionStep => self.competition_step(),
            Happening::AgentStatus => self.agent_status(),
            Happening::TrainingData => match self.training_data() {
                Some(event) => event,
                None => self.competition_step(),
            },
            Happening::AgentProgress => self.agent_progress(),
            Happening::CurriculumProgress => self.curriculum_progress(),
        }
    }

    fn pick_happening(&mut self) -> Happening {
        let total: u32 = MIX.iter().map(|(_, weight)| weight).sum();
        let mut roll = self.rng.random_range(0..total);
        for (happening, weight) in MIX {
            if roll < weight {
                return happening;
            }
            roll -= weight;
        }
        unreachable!("the roll is below the sum of the weights")
    }

    /// A heartbeat-like status: only the load figures and the report counter move from one
    /// status of an agent to the next, so delta encoding has little to send.
    fn agent_status(&mut self) -> SimEvent {
        let index = self.rng.random_range(0..self.agents.len());
        let flip = self.rng.random_bool(0.1);
        let drift = self.rng.random_range(-4.0..4.0);
        let agent = &mut self.agents[index];
        agent.reports += 1;
        if agent.competition.is_none() && flip {
            agent.training = !agent.training;
        }
        agent.cpu_pct = round_to((agent.cpu_pct + drift).clamp(5.0, 99.0), 1);
        let state = match (&agent.competition, agent.training) {
            (Some(_), _) => "competing",
            (None, true) => "training",
            (None, false) => "idle",
        };
        let mut data = json!({
            "agent_id": agent.id,
            "university_id": agent.university,
            "arena_id": self.arena_ids[agent.arena],
            "model": agent.model,
            "version": agent.version,
            "state": state,
            "elo": agent.elo,
            "cpu_pct": agent.cpu_pct,
            "mem_mb": agent.mem_mb,
            "reports": agent.reports,
        });
        if let Some(competition) = &agent.competition {
            data["competition_id"] = json!(competition);
        }
        SimEvent {
            channels: vec![
                format!("agent/{}", agent.id),
                format!("arena/{}", self.arena_ids[agent.arena]),
            ],
            event_type: "agent_status",
            data,
        }
    }

    fn agent_progress(&mut self) -> SimEvent {
        let index = self.rng.random_range(0..self.agents.len());
        let steps = 256 * self.rng.random_range(1..=4);
        let loss_factor = self.rng.random_range(0.95..1.01);
        let reward_drift = self.rng.random_range(-0.2..0.5);
        let entropy = self.rng.random_range(0.4..1.6);
        let samples_per_s = self.rng.random_range(800..1600);
        let agent = &mut self.agents[index];
        agent.step += steps;
        agent.loss = (agent.loss * loss_factor).max(0.02);
        agent.reward_mean += reward_drift;
        SimEvent {
            channels: vec![
                format!("agent/{}", agent.id),
                format!("university/{}", agent.university),
            ],
            event_type: "agent_progress",
            data: json!({
                "agent_id": agent.id,
                "university_id": agent.university,
                "model": agent.model,
                "step": agent.step,
                "epoch": agent.step / 10_000,
                "loss": round_to(agent.loss, 4),
                "reward_mean": round_to(agent.reward_mean, 3),
                "entropy": round_to(entropy, 3),
                "learning_rate": 0.0003,
                "samples_per_s": samples_per_s,
            }),
        }
    }

    /// An agent works through the modules of its curriculum, then moves to the next one.
    fn curriculum_progress(&mut self) -> SimEvent {
        let index = self.rng.random_range(0..self.agents.len());
        let gain = self.rng.random_range(4..=15);
        let assessment = round_to(self.rng.random_range(0.5..1.0), 2);
        let agent = &mut self.agents[index];
        if agent.percent == 100 {
            agent.percent = 0;
            agent.module += 1;
            if agent.module == CURRICULA[agent.curriculum].modules.len() {
                agent.module = 0;
                agent.curriculum = (agent.curriculum + 1) % CURRICULA.len();
            }
        }
        agent.percent = (agent.percent + gain).min(100);
        let curriculum = &CURRICULA[agent.curriculum];
        SimEvent {
            channels: vec![
                format!("curriculum/{}", curriculum.id),
                format!("university/{}", agent.university),
            ],
            event_type: "curriculum_progress",
            data: json!({
                "university_id": agent.university,
                "curriculum_id": curriculum.id,
                "agent_id": agent.id,
                "module": curriculum.modules[agent.module],
                "module_index": agent.module + 1,
                "modules_total": curriculum.modules.len(),
                "percent": agent.percent,
                "assessment_score": assessment,
            }),
        }
    }

    /// A sample from a running competition, published to its arena, competition,
    /// university and agent channels at once. `None` when no competition runs.
    fn training_data(&mut self) -> Option<SimEvent> {
        let running: Vec<usize> = (0..self.running.len())
            .filter(|&arena| self.running[arena].is_some())
            .collect();
        if running.is_empty() {
            return None;
        }
        let arena = running[self.rng.random_range(0..running.len())];
        let side = self.rng.random_range(0..2);
        let competition = self.running[arena].as_ref()?;
        let agent = &self.agents[competition.agents[side]];
        let game = competition.game;
        let rng = &mut self.rng;
        let mut point = || round_to(rng.random_range(0.0..10.0), 2);
        let observation = json!({
            "position": [point(), point()],
            "opponent": [point(), point()],
            "health": round_to(rng.random_range(0.0..1.0), 3),
        });
        Some(SimEvent {
            channels: vec![
                format!("arena/{}", self.arena_ids[arena]),
                format!("competition/{}", competition.id),
                format!("university/{}", agent.university),
                format!("agent/{}", agent.id),
            ],
            event_type: "training_data",
            data: json!({
                "university_id": agent.university,
                "agent_id": agent.id,
                "competition_id": competition.id,
                "arena_id": self.arena_ids[arena],
                "game": game.name,
                "round": competition.rounds_played,
                "observation": observation,
                "action": game.actions[rng.random_range(0..game.actions.len())],
                "reward": round_to(rng.random_range(-1.0..1.0), 3),
                "value_estimate": round_to(rng.random_range(-2.0..2.0), 3),
                "policy_version": agent.version,
            }),
        })
    }
}
