"""Training and fine-tuning: training data from masks or QuPath annotations, the training loop."""
