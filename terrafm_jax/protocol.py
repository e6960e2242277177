"""The k-NN protocol of the paper's tables (METHOD.md 7, after Galileo / Copernicus-Bench), written
once: the evaluator's defaults (eval/config.py, eval/knn.py) and the trainer's learning checks
(train/default_config.py's `knn` and `transfer` sections) read it from here."""

KNN_K = 20               # neighbours
KNN_TEMPERATURE = 0.07   # votes weighted by exp(cosine similarity / T)
KNN_KS = (KNN_K, 5)      # the learning checks also report k = 5

# How an image becomes one feature vector in the real-pixel learning check (eval/transfer_check.py):
# the CLS token; the mean of the patch tokens; both concatenated; or each feature's mean and
# standard deviation over the patch tokens, the learned counterpart of the raw per-band mean and
# standard deviation that the check scores beside it.
TRANSFER_POOLINGS = ("cls", "mean", "cls+mean", "mean+std")
