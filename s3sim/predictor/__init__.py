"""Predictor training and the committed prediction tables: the trained output-length predictor, its data
splits and its command line. The predictor interface and the simple predictors live in `s3sim.core.predictors`."""
