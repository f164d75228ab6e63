# shellcheck shell=bash
# Sourced by train.sbatch and train_gpu.sbatch: run one pgd job step that survives preemption.
#
# run_resumable CMD...   runs `srun $SRUN_ARGS CMD...` in the background and forwards USR1/TERM to it.
# CMD should include `--checkpoint PATH --resume`, so each start continues from the newest checkpoint.
#
# When pgd stops with a checkpoint (exit 75), this script requeues the job (`scontrol requeue`, at most
# MAX_RESTARTS times) only while SLURM still runs it:
# - after USR1 to the batch shell (SLURM sends it before the time limit with --signal=B:USR1@120) or
#   pgd's own --max-time;
# - after a preemption in its grace time (PreemptTime set; SLURM signals the steps, not the batch shell)
#   on a partition whose PreemptMode is REQUEUE: SLURM requeues only a job it has to kill at the end of
#   the grace time, not one that ended in time. (With PreemptParameters=send_user_signal the preemption
#   sends the --signal USR1 instead of TERM; the same rule applies.)
# Never after TERM to the batch shell: `scancel` (the job is cancelled: the checkpoint stays, nothing is
# requeued), `scontrol requeue` (SLURM requeues the job itself) or the time limit (TIMEOUT).
# A step that ends any other way (a rank killed, an error) ends the job with that exit code.

PGD_EXIT_PREEMPTED=75

# How this job stands, from `scontrol show job`: "running", "preempted-requeue" (running, preempted,
# partition PreemptMode=REQUEUE), "preempted" (another PreemptMode) or "ended" (any other state).
_pgd_job_standing() {
    local info mode
    info=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null)
    if [[ $info != *"JobState=RUNNING "* ]]; then
        echo ended
    elif [[ $info == *"PreemptTime=None"* ]]; then
        echo running
    else
        mode=$(scontrol show partition "${SLURM_JOB_PARTITION:-}" 2>/dev/null)
        if [[ $mode =~ PreemptMode=[A-Z,]*REQUEUE ]]; then echo preempted-requeue; else echo preempted; fi
    fi
}

run_resumable() {
    local restarts=${SLURM_RESTART_COUNT:-0}
    if (( restarts > MAX_RESTARTS )); then
        echo "pgd job: already restarted $restarts times (MAX_RESTARTS=$MAX_RESTARTS): giving up" >&2
        return 1
    fi
    echo "pgd job ${SLURM_JOB_ID:-?}: start $((restarts + 1)) of at most $((MAX_RESTARTS + 1)): $*"
    local step="" pending="" rc got_term=0
    # a signal is forwarded to the step; one that comes before the step has started, when it has
    trap 'echo "pgd job: USR1 (time limit near): asking pgd to checkpoint and stop"
          pending=USR1; [[ -n $step ]] && kill -USR1 "$step"' USR1
    trap 'got_term=1
          echo "pgd job: TERM (scancel, scontrol requeue or the time limit): asking pgd to checkpoint and stop"
          pending=TERM; [[ -n $step ]] && kill -TERM "$step"' TERM
    # shellcheck disable=SC2086  # SRUN_ARGS is a list of options
    srun $SRUN_ARGS "$@" &
    step=$!
    [[ -n $pending ]] && kill -"$pending" "$step"
    while true; do  # `wait` returns early when a trapped signal arrives
        wait "$step"
        kill -0 "$step" 2>/dev/null || break
    done
    wait "$step"
    rc=$?
    trap - USR1 TERM
    if (( rc == PGD_EXIT_PREEMPTED )); then
        local standing why=""
        standing=$(_pgd_job_standing)
        if (( got_term )); then
            why="after TERM (scancel, scontrol requeue or the time limit)"
        elif [[ $standing == ended ]]; then
            why="SLURM no longer runs the job"
        elif [[ $standing == preempted ]]; then
            why="the job is preempted and its partition does not requeue preempted jobs"
        fi
        if [[ -n $why ]]; then
            echo "pgd job: stopped with a checkpoint; not requeued: $why"
        elif (( restarts < MAX_RESTARTS )); then
            local preempted=""
            [[ $standing == preempted-requeue ]] && preempted=" (preempted)"
            echo "pgd job: stopped with a checkpoint$preempted; requeueing (restart $((restarts + 1)))"
            scontrol requeue "$SLURM_JOB_ID"
        else
            echo "pgd job: stopped with a checkpoint, but MAX_RESTARTS=$MAX_RESTARTS is reached" >&2
        fi
    elif (( rc != 0 )); then
        echo "pgd job: the pgd step failed (exit code $rc); not requeued" >&2
    fi
    return "$rc"
}
