//! Library settings as the command line names them. An argument that sets a library setting carries the
//! setting's name as its clap id (`#[arg(long = "lr", id = "denoiser.learning_rate")]`), so the command's own
//! argument declarations are the only link between the two: an error naming a setting is shown with its flag.

use clap::Args;

/// `e` with each setting it names (`invalid SETTING:`, `` `SETTING` ``, `` `SETTING = value` ``) written as the
/// flag of `A`'s argument whose id it is.
pub fn with_flags<A: Args>(e: anyhow::Error) -> anyhow::Error {
    let command = A::augment_args(clap::Command::new("diffuse"));
    let mut text = format!("{e:#}");
    for arg in command.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        text = text
            .replace(&format!("invalid {id}: "), &format!("invalid --{long}: "))
            .replace(&format!("`{id} = "), &format!("`--{long} "))
            .replace(&format!("`{id}`"), &format!("`--{long}`"));
    }
    anyhow::anyhow!(text)
}

#[cfg(test)]
mod tests {
    use super::with_flags;
    use crate::commands::train::TrainArgs;

    #[test]
    fn settings_are_written_as_the_flags_whose_ids_they_are() {
        let e = anyhow::anyhow!(
            "invalid denoiser.learning_rate: -1: must be > 0; `denoiser.timestep_bias.end = 5` is below \
             `denoiser.timestep_bias.begin`; `workers` and `denoiser.steps` too"
        );
        assert_eq!(
            with_flags::<TrainArgs>(e).to_string(),
            "invalid --lr: -1: must be > 0; `--timestep-bias-end 5` is below `--timestep-bias-begin`; \
             `--workers` and `--steps` too"
        );
    }
}
