# Sourced by train.sbatch and train_gpu.sbatch: run one pgd job step that survives preemption.
#
# run_resumable CMD...   runs `srun $SRUN_ARGS CMD...` in the background, forwards USR1/TERM to it (SLURM
# sends USR1 to the batch shell 120 s before the time limit with --signal=B:USR1@120), and when pgd
# exits 75 ("preempted, resumable": checkpoint written) requeues the job, at most MAX_RESTARTS times.
# CMD should include `--checkpoint PATH --resume`, so each restart continues from the newest checkpoint.

PGD_EXIT_PREEMPTED=75

run_resumable() {
    local restarts=${SLURM_RESTART_COUNT:-0}
    if (( restarts > MAX_RESTARTS )); then
        echo "pgd job: already restarted $restarts times (MAX_RESTARTS=$MAX_RESTARTS): giving up" >&2
        return 1
    fi
    echo "pgd job ${SLURM_JOB_ID:-?}: start $((restarts + 1)) of at most $((MAX_RESTARTS + 1)): $*"
    # shellcheck disable=SC2086  # SRUN_ARGS is a list of options
    srun $SRUN_ARGS "$@" &
    local step=$! rc
    trap 'echo "pgd job: USR1 (time limit near): asking pgd to checkpoint and stop"; kill -USR1 $step' USR1
    trap 'echo "pgd job: TERM: asking pgd to checkpoint and stop"; kill -TERM $step' TERM
    while true; do  # `wait` returns early when a trapped signal arrives
        wait "$step"
        kill -0 "$step" 2>/dev/null || break
    done
    wait "$step"
    rc=$?
    trap - USR1 TERM
    if (( rc == PGD_EXIT_PREEMPTED )); then
        if (( restarts < MAX_RESTARTS )); then
            echo "pgd job: stopped with a checkpoint; requeueing (restart $((restarts + 1)))"
            scontrol requeue "$SLURM_JOB_ID"
        else
            echo "pgd job: stopped with a checkpoint, but MAX_RESTARTS=$MAX_RESTARTS is reached" >&2
        fi
    fi
    return "$rc"
}
