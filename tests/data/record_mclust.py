"""Record mclust's answers on a small fixed data set into mclust_fixture.json.

Run once by hand (needs R with mclust: apt-get install r-base-core r-cran-mclust):

    python tests/data/record_mclust.py

The tests read only the JSON; they never need R.
"""

import json
import pathlib
import subprocess
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).parent

R_SCRIPT = r"""
suppressMessages(library(mclust))
X <- as.matrix(read.csv(file.path(dir, "x.csv"), header = FALSE))
Z <- as.matrix(read.csv(file.path(dir, "z.csv"), header = FALSE))
n <- nrow(X); G <- ncol(Z)
out <- list(mclust_version = as.character(packageVersion("mclust")))
hcpart <- function(model, use) {
  tree <- hc(X, modelName = model, use = use)
  cl <- hclass(tree, 1:(n - 1))
  lapply(seq_len(ncol(cl)), function(g) as.integer(cl[, g]))
}
out$hc <- list(VVV_VARS = hcpart("VVV", "VARS"), VII_VARS = hcpart("VII", "VARS"),
               EII_VARS = hcpart("EII", "VARS"), VVV_SVD = hcpart("VVV", "SVD"))
models <- c(full = "VVV", tied = "EEE", diag = "VVI", spherical = "VII")
out$prior <- list(); out$mstep <- list(); out$me <- list()
for (ct in names(models)) {
  m <- models[[ct]]
  pr <- defaultPrior(X, G, m)
  out$prior[[ct]] <- list(shrinkage = pr$shrinkage, mean = as.numeric(pr$mean), dof = pr$dof,
                          scale = as.numeric(pr$scale))
  ms <- mstep(modelName = m, data = X, z = Z, prior = priorControl())
  out$mstep[[ct]] <- list(mean = as.numeric(ms$parameters$mean),
                          sigma = as.numeric(ms$parameters$variance$sigma),
                          pro = as.numeric(ms$parameters$pro))
  fit <- me(modelName = m, data = X, z = Z, prior = priorControl(),
            control = emControl(tol = c(1e-10, 1e-10)))
  out$me[[ct]] <- list(loglik = fit$loglik, mean = as.numeric(fit$parameters$mean),
                       sigma = as.numeric(fit$parameters$variance$sigma),
                       pro = as.numeric(fit$parameters$pro), iterations = attr(fit, "info")[["iterations"]])
}
cat(jsonlite::toJSON(out, digits = NA, auto_unbox = TRUE), file = file.path(dir, "out.json"))
"""


def main():
    rng = np.random.default_rng(22)
    centers = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [-3.0, 3.0, 2.0]])
    x = np.vstack([rng.multivariate_normal(c, np.diag([1.0, 0.5, 2.0]) * (i + 1) / 2, 12) for i, c in enumerate(centers)])
    x = np.round(x[rng.permutation(len(x))], 6)
    z = rng.dirichlet(np.ones(3) * 0.7, size=len(x))
    z = np.round(z / z.sum(1, keepdims=True), 12)
    with tempfile.TemporaryDirectory() as tmp:
        np.savetxt(f"{tmp}/x.csv", x, delimiter=",", fmt="%.6f")
        np.savetxt(f"{tmp}/z.csv", z, delimiter=",", fmt="%.17g")
        subprocess.run(["Rscript", "-e", f"dir <- '{tmp}'", "-e", R_SCRIPT], check=True)
        out = json.loads(pathlib.Path(f"{tmp}/out.json").read_text())
        x = np.loadtxt(f"{tmp}/x.csv", delimiter=",")
        z = np.loadtxt(f"{tmp}/z.csv", delimiter=",")
    out["x"] = x.tolist()
    out["z"] = z.tolist()
    out["recorded_by"] = "tests/data/record_mclust.py (Rscript, mclust " + out["mclust_version"] + ")"
    (HERE / "mclust_fixture.json").write_text(json.dumps(out, indent=None) + "\n")


if __name__ == "__main__":
    main()
