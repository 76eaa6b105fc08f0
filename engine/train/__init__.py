"""Training one stage: the step, the loop, its data stream, evaluation, checkpointing policy, compile choice, calibration."""
