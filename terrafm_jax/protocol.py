"""The k-NN protocol of the paper's tables (METHOD.md 7, after Galileo / Copernicus-Bench), written
once: the evaluator's defaults (eval/config.py, eval/knn.py) and the trainer's learning checks
(train/default_config.py's `knn` and `transfer` sections) read it from here."""

KNN_K = 20               # neighbours
KNN_TEMPERATURE = 0.07   # votes weighted by exp(cosine similarity / T)
KNN_KS = (KNN_K, 5)      # the learning checks also report k = 5
