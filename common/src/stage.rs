//! The stages a trial runs, in pipeline order, and what each needs (DESIGN §1).

string_enum!(
    /// One step of a trial. The order of the variants is the order they run in.
    Stage, "stage", {
        /// hls4ml reads the model and writes the HLS project.
        Convert => "convert",
        /// hls4ml `compile()` + `predict()`, compared with the float model.
        Emulate => "emulate",
        /// C synthesis (`csynth_design`).
        Csynth => "csynth" | "synth",
        /// C/RTL co-simulation.
        Cosim => "cosim",
        /// IP export.
        Export => "export",
        /// Vivado out-of-context synthesis (`vivado_synth.tcl`).
        Vsynth => "vsynth",
    }
);

impl Stage {
    /// True for the stages that run Vitis HLS, Vivado HLS or Vivado.
    pub fn needs_xilinx_tools(self) -> bool {
        matches!(
            self,
            Stage::Csynth | Stage::Cosim | Stage::Export | Stage::Vsynth
        )
    }

    /// The stages that run without Xilinx tools: the default where the tools are absent.
    pub const WITHOUT_TOOLS: &'static [Stage] = &[Stage::Convert, Stage::Emulate];

    /// The seed's full flow: every stage.
    pub const FULL_FLOW: &'static [Stage] = Stage::ALL;

    /// The stages a sweep runs when it names none: every stage where an HLS tool and Vivado
    /// are there, all but `vsynth` with an HLS tool alone, else `convert` and `emulate`.
    pub fn defaults(hls: bool, vivado: bool) -> Vec<Stage> {
        match (hls, vivado) {
            (true, true) => Stage::FULL_FLOW.to_vec(),
            (true, false) => Stage::FULL_FLOW
                .iter()
                .copied()
                .filter(|s| *s != Stage::Vsynth)
                .collect(),
            (false, _) => Stage::WITHOUT_TOOLS.to_vec(),
        }
    }
}

/// Sorts stages into pipeline order and drops repeats.
pub fn normalize_stages(stages: &[Stage]) -> Vec<Stage> {
    let mut out = stages.to_vec();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stages_sort_into_pipeline_order() {
        let got = normalize_stages(&[Stage::Vsynth, Stage::Convert, Stage::Csynth, Stage::Convert]);
        assert_eq!(got, [Stage::Convert, Stage::Csynth, Stage::Vsynth]);
        assert_eq!("synth".parse::<Stage>().unwrap(), Stage::Csynth);
    }
}
