"""SKDCGN: counterfactual generative networks (Sauer & Geiger, ICLR 2021) distilled, black-box,
into small student generators (Ambekar et al., 2022; students after TinyGAN, Chang & Lu, ACCV
2020).

composition   x = m*f + (1-m)*b, counterfactual labels, the texture shuffler
data          coloured digits (colored, double_colored, wildlife) with ground-truth mechanisms
data_published  the same three at 32x32 with the published datasets' facts
shape_gap     how far the published teachers' MNIST shapes are from our digits
mechanisms    class-conditional mechanism generators and the CGN composing them
teacher_fit   the default teacher: fitted with supervision from the known mechanisms
cgn_mnist     the CGN authors' published MNIST teachers (32x32), loaded strictly, unchanged
retrain       SKDCGN's composition study: a published CGN fine-tuned with a perturbed mask
blackbox      the boundary: query access only, stored query/answer sets
student       student generators, discriminator, TinyGAN's losses
counterfactuals, classifier   counterfactual datasets (and their augmentation), the classifier
controls      swaps, label fidelity, KID, side-by-side grids: what the students keep
pipeline, cache, config   one experiment end to end, shared on disk; its config schema
(sweeps of it run through the one engine: ``kdci_ray.engine.skdcgn``)
"""
