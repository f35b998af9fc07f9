//! The fixed catalog of the simulated world: its universities, the models its agents run,
//! the games played in its arenas and the curricula its agents follow.

pub(super) const UNIVERSITIES: [&str; 3] = ["u1", "u2", "u3"];
pub(super) const MODELS: [&str; 4] = ["ppo-lstm", "dqn-rainbow", "muzero-lite", "sac-transformer"];

pub(super) struct Game {
    pub name: &'static str,
    pub actions: &'static [&'static str],
    /// A round scores 0..=this many points per agent.
    pub max_round_score: u32,
}

pub(super) const GAMES: [Game; 4] = [
    Game {
        name: "capture_the_flag",
        actions: &[
            "advance",
            "retreat",
            "flank_left",
            "flank_right",
            "defend",
            "capture",
        ],
        max_round_score: 10,
    },
    Game {
        name: "poker_heads_up",
        actions: &["fold", "check", "call", "raise", "all_in"],
        max_round_score: 20,
    },
    Game {
        name: "go_9x9",
        actions: &["place", "pass", "resign_offer"],
        max_round_score: 6,
    },
    Game {
        name: "negotiation",
        actions: &["offer", "counter", "accept", "reject", "walk_away"],
        max_round_score: 8,
    },
];

pub(super) struct Curriculum {
    pub id: &'static str,
    pub modules: &'static [&'static str],
}

pub(super) const CURRICULA: [Curriculum; 3] = [
    Curriculum {
        id: "rl-foundations",
        modules: &["bandits", "mdp-basics", "q-learning", "policy-gradients"],
    },
    Curriculum {
        id: "game-theory",
        modules: &["normal-form", "nash-equilibria", "repeated-games"],
    },
    Curriculum {
        id: "multi-agent",
        modules: &[
            "self-play",
            "opponent-modeling",
            "communication",
            "league-training",
        ],
    },
];
