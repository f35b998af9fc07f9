//! Competitions in the simulated world: in each arena, one at a time, a start, its rounds
//! and an end, with scores that add up and Elo ratings that follow the results.

use rand::Rng;
use serde_json::{json, Map, Value};

use super::{
    catalog::{Game, GAMES},
    SimEvent, World, AGENTS_PER_ARENA,
};

/// Elo points moved from the loser to the winner of a competition.
const ELO_K: i32 = 16;

pub(super) struct Competition {
    pub(super) id: String,
    pub(super) game: &'static Game,
    pub(super) agents: [usize; 2],
    rounds_planned: u32,
    pub(super) rounds_played: u32,
    totals: [u32; 2],
    elapsed_ms: u64,
}

impl World {
    pub(super) fn competition_step(&mut self) -> SimEvent {
        let arena = self.next_arena;
        self.next_arena = (arena + 1) % self.arena_ids.len();
        match self.running[arena].take() {
            None => self.start_competition(arena),
            Some(mut competition) if competition.rounds_played < competition.rounds_planned => {
                let event = self.play_round(arena, &mut competition);
                self.running[arena] = Some(competition);
                event
            }
            Some(competition) => self.end_competition(arena, competition),
        }
    }

    fn competition_channels(&self, arena: usize, competition: &str) -> Vec<String> {
        vec![
            format!("arena/{}", self.arena_ids[arena]),
            format!("competition/{competition}"),
        ]
    }

    fn start_competition(&mut self, arena: usize) -> SimEvent {
        let base = arena * AGENTS_PER_ARENA;
        let first = self.rng.random_range(0..AGENTS_PER_ARENA);
        let second = (first + self.rng.random_range(1..AGENTS_PER_ARENA)) % AGENTS_PER_ARENA;
        let agents = [base + first, base + second];
        let game = &GAMES[self.rng.random_range(0..GAMES.len())];
        let id = format!("c{}", self.next_competition);
        self.next_competition += 1;
        let rounds_planned = self.rng.random_range(5..=15);
        for agent in agents {
            self.agents[agent].competition = Some(id.clone());
        }
        let lineup: Vec<Value> = agents
            .iter()
            .map(|&a| {
                let agent = &self.agents[a];
                json!({
                    "agent_id": agent.id,
                    "university_id": agent.university,
                    "model": agent.model,
                    "elo": agent.elo,
                })
            })
            .collect();
        let event = SimEvent {
            channels: self.competition_channels(arena, &id),
            event_type: "competition_start",
            data: json!({
                "competition_id": id,
                "arena_id": self.arena_ids[arena],
                "game": game.name,
                "agents": lineup,
                "rounds_planned": rounds_planned,
            }),
        };
        self.running[arena] = Some(Competition {
            id,
            game,
            agents,
            rounds_planned,
            rounds_played: 0,
            totals: [0, 0],
            elapsed_ms: 0,
        });
        event
    }

    fn play_round(&mut self, arena: usize, competition: &mut Competition) -> SimEvent {
        competition.rounds_played += 1;
        let round_ms = self.rng.random_range(200..1500);
        competition.elapsed_ms += round_ms;
        let game = competition.game;
        let mut moves = Vec::with_capacity(2);
        for side in 0..2 {
            let action = game.actions[self.rng.random_range(0..game.actions.len())];
            let score = self.rng.random_range(0..=game.max_round_score);
            competition.totals[side] += score;
            moves.push(json!({
                "agent_id": self.agents[competition.agents[side]].id,
                "action": action,
                "score": score,
                "total": competition.totals[side],
            }));
        }
        SimEvent {
            channels: self.competition_channels(arena, &competition.id),
            event_type: "competition_round",
            data: json!({
                "competition_id": competition.id,
                "arena_id": self.arena_ids[arena],
                "game": game.name,
                "round": competition.rounds_played,
                "rounds_planned": competition.rounds_planned,
                "moves": moves,
                "round_ms": round_ms,
                "elapsed_ms": competition.elapsed_ms,
            }),
        }
    }

    fn end_competition(&mut self, arena: usize, competition: Competition) -> SimEvent {
        let [a, b] = competition.agents;
        let [total_a, total_b] = competition.totals;
        let winner = match total_a.cmp(&total_b) {
            std::cmp::Ordering::Greater => Some((a, b)),
            std::cmp::Ordering::Less => Some((b, a)),
            std::cmp::Ordering::Equal => None,
        };
        if let Some((won, lost)) = winner {
            self.agents[won].elo += ELO_K;
            self.agents[lost].elo -= ELO_K;
        }
        let mut final_scores = Map::new();
        let mut elo = Map::new();
        for (agent, total) in [(a, total_a), (b, total_b)] {
            self.agents[agent].competition = None;
            final_scores.insert(self.agents[agent].id.clone(), json!(total));
            elo.insert(self.agents[agent].id.clone(), json!(self.agents[agent].elo));
        }
        let mut data = json!({
            "competition_id": competition.id,
            "arena_id": self.arena_ids[arena],
            "game": competition.game.name,
            "result": if winner.is_some() { "win" } else { "draw" },
            "final_scores": final_scores,
            "rounds": competition.rounds_played,
            "duration_ms": competition.elapsed_ms,
            "elo": elo,
        });
        if let Some((won, _)) = winner {
            data["winner"] = json!(self.agents[won].id);
        }
        SimEvent {
            channels: self.competition_channels(arena, &competition.id),
            event_type: "competition_end",
            data,
        }
    }
}
