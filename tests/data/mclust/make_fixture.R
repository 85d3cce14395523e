# mclust's answers on the data sets of tests/data/mclust, written to fixture.json.
#
#   python tests/data/mclust/make_data.py && Rscript tests/data/mclust/make_fixture.R
#
# Per data set: mclust's default hierarchical start (hc, model VVV on the SVD
# transform, the whole data) and its partitions (hclass) at K = 1..9; at one K,
# for each of the fourteen models, one M-step from that partition (mstep) and
# EM from it to a tight tolerance (me); the BIC table of mclustBIC over K = 1..9
# and the model Mclust picks, and ICL. Also nMclustParams for every model, d = 1..6
# and G = 1..9. Needs R with mclust (>= 6) and jsonlite.
#
# With the argument "prior" (Rscript tests/data/mclust/make_fixture.R prior) it writes
# prior.json instead: for the models mclust defines its conjugate prior for, per data set
# at one K from the same partition, defaultPrior, one mstep(..., prior = priorControl()),
# one step of me's (itmax 1: me's M-step differs from mstep's for some models) and me
# with the prior to a tight tolerance; and iris's mclustBIC table with the prior.
suppressPackageStartupMessages({library(mclust); library(jsonlite)})
here <- local({
  args <- commandArgs(trailingOnly = FALSE)
  f <- sub("^--file=", "", args[grep("^--file=", args)])
  if (length(f)) dirname(normalizePath(f)) else "tests/data/mclust"
})
models <- c("EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE", "EVE", "VVE", "EEV", "VEV", "EVV", "VVV")

write_csv <- function(x, name) {
  con <- gzfile(file.path(here, paste0(name, ".csv.gz")), "w")
  write.table(format(as.matrix(x), digits = 10), con, sep = ",", quote = FALSE,
              row.names = FALSE, col.names = FALSE)
  close(con)
}
data(diabetes, package = "mclust"); data(banknote, package = "mclust"); data(faithful)
write_csv(diabetes[, -1], "diabetes"); write_csv(banknote[, -1], "banknote"); write_csv(faithful, "faithful")

read_set <- function(name) as.matrix(read.csv(file.path(here, paste0(name, ".csv.gz")), header = FALSE))
sets <- list(iris = 3, wine = 3, diabetes = 3, banknote = 2, gen2d = 3, gen3d = 4, gen5d = 3, faithful = 4)
tight <- emControl(tol = c(1e-15, 1e-13), itmax = c(50000L, 20000L))

params_of <- function(p, K, d) {
  sigma <- p$variance$sigma
  list(pro = p$pro, mean = t(matrix(p$mean, d, K)),
       sigma = lapply(seq_len(K), function(k) matrix(sigma[, , k], d, d)))
}

prior_models <- c("EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "EEV", "VEV", "VVV")
if ("prior" %in% commandArgs(trailingOnly = TRUE)) {
  out <- list(mclust_version = as.character(packageVersion("mclust")), r_version = R.version.string,
              tight_control = list(tol = tight$tol, itmax = tight$itmax), models = prior_models, sets = list())
  one_step <- emControl(tol = tight$tol, itmax = c(1L, 20000L))
  for (name in c("iris", "wine", "diabetes", "banknote", "gen3d")) {
    X <- read_set(name); n <- nrow(X); d <- ncol(X); K <- sets[[name]]
    z <- unmap(hclass(hc(X, modelName = "VVV", use = "SVD"), K))
    per_model <- list()
    for (m in prior_models) {
      pr <- defaultPrior(X, K, m)
      ms <- mstep(X, modelName = m, z = z, prior = priorControl(), control = tight)
      step <- suppressWarnings(me(X, modelName = m, z = z, prior = priorControl(), control = one_step))
      fit <- me(X, modelName = m, z = z, prior = priorControl(), control = tight)
      per_model[[m]] <- list(
        prior = list(shrinkage = pr$shrinkage, mean = as.numeric(pr$mean), dof = pr$dof,
                     scale = if (length(pr$scale) == 1) pr$scale else matrix(pr$scale, d, d)),
        mstep = params_of(ms$parameters, K, d), me_step = params_of(step$parameters, K, d),
        em = c(params_of(fit$parameters, K, d),
               list(loglik = fit$loglik, iterations = unname(attr(fit, "info")[1]))))
    }
    out$sets[[name]] <- list(n = n, d = d, K = K, models = per_model)
    message(name, " done")
  }
  X <- read_set("iris")
  set.seed(0)
  bic <- mclustBIC(X, G = 1:9, modelNames = prior_models, prior = priorControl())
  out$iris_bic <- setNames(lapply(prior_models, function(m) as.numeric(bic[, m])), prior_models)
  write_json(out, file.path(here, "prior.json"), digits = NA, auto_unbox = TRUE, na = "null")
  quit(save = "no")
}

out <- list(mclust_version = as.character(packageVersion("mclust")),
            r_version = R.version.string, tight_control = list(tol = tight$tol, itmax = tight$itmax),
            sets = list(), n_parameters = list())
for (name in names(sets)) {
  X <- read_set(name); n <- nrow(X); d <- ncol(X); K <- sets[[name]]
  hcp <- hc(X, modelName = "VVV", use = "SVD")
  hclass_all <- hclass(hcp, 1:9)
  z <- unmap(hclass_all[, K])
  per_model <- list()
  if (name != "faithful") for (m in models) {
    ms <- tryCatch(mstep(X, modelName = m, z = z, control = tight), error = function(e) NULL)
    fit <- tryCatch(me(X, modelName = m, z = z, control = tight), error = function(e) NULL)
    entry <- list()
    if (!is.null(ms) && all(is.finite(unlist(ms$parameters$variance$sigma))))
      entry$mstep <- params_of(ms$parameters, K, d)
    if (!is.null(fit) && is.finite(fit$loglik)) {
      entry$em <- c(params_of(fit$parameters, K, d),
                    list(loglik = fit$loglik, iterations = unname(attr(fit, "info")[1])))
    }
    per_model[[m]] <- entry
  }
  set.seed(0)
  bic <- mclustBIC(X, G = 1:9)
  set.seed(0)
  icl <- mclustICL(X, G = 1:9)
  best <- summary(bic, X)
  table_of <- function(tab) lapply(models, function(m) as.numeric(tab[, m]))
  out$sets[[name]] <- list(
    n = n, d = d, K = K, hclass = lapply(1:9, function(k) as.integer(hclass_all[, k])),
    models = per_model,
    bic = setNames(table_of(bic), models), icl = setNames(table_of(icl), models),
    best = list(model = best$modelName, G = best$G, bic = best$bic, loglik = best$loglik,
                classification = as.integer(best$classification))
  )
  message(name, " done")
}
for (m in models) out$n_parameters[[m]] <- lapply(1:6, function(d) sapply(1:9, function(G) nMclustParams(m, d, G)))
write_json(out, file.path(here, "fixture.json"), digits = NA, auto_unbox = TRUE, na = "null")
