//! The executor runs the step the plan describes: for every default
//! `validate` variant (1, 2 and 4 ranks; every wrapping, reshard and
//! checkpointing choice) and the crop groups one after the other in
//! backward (with and without resharding, FSDP and hybrid), the events each rank's first step ran
//! (`train --record-events`) equal the plan's compiled schedule
//! (`runspec::schedule::Schedule::from_plan`), the one the planner costs.

use cost_models::hardware::load_profile;
use planner::validation::{default_variants, plan_variant, Variant};
use runspec::recipe::Recipe;
use runspec::schedule::Schedule;
use std::process::Command;

#[test]
fn every_validate_variant_runs_its_compiled_schedule() {
    let recipe = Recipe::load("tiny-cpu").unwrap();
    let hw = load_profile(&recipe.cluster.gpu).unwrap();
    let dir = std::env::temp_dir().join(format!("seerscale-schedule-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let by_group = ["w2-block-reshard-ckptsome-fp32-b8-r32-bygroup", "w4h2-block-keep-ckptall-fp32-b8-r32-bygroup"].map(|n| Variant::parse(n).unwrap());
    for v in default_variants().into_iter().chain(by_group) {
        let (plan, _) = plan_variant(&recipe, &hw, &v).unwrap();
        let want = Schedule::from_plan(&plan).unwrap();
        let vdir = dir.join(v.to_string());
        std::fs::create_dir_all(&vdir).unwrap();
        let plan_path = vdir.join("plan.json");
        plan.save(&plan_path).unwrap();
        let run = vdir.join("run");
        let out = Command::new(env!("CARGO_BIN_EXE_seerscale"))
            .args(["train", "--plan"])
            .arg(&plan_path)
            .args(["--nproc-per-node", &v.world_size.to_string(), "--steps", "1", "--record-events", "--timeout-s", "60", "--threads", "1", "--out"])
            .arg(&run)
            .output()
            .unwrap();
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        for rank in 0..v.world_size {
            let path = run.join(format!("events.rank{rank}.json"));
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{v}: rank {rank} wrote no events ({e}); train said:\n{log}"));
            let ran: Schedule = serde_json::from_str(&text).unwrap();
            if ran != want {
                let (a, b) = (Schedule::lines(&ran.events), Schedule::lines(&want.events));
                let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
                panic!(
                    "{v}: rank {rank} ran {} events, the plan compiles to {}; first difference at event {at}: ran {:?}, compiled {:?}",
                    a.len(),
                    b.len(),
                    a.get(at),
                    b.get(at)
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
