"""Running a trained model on images: descriptors of a user's own images (:class:`.extractor.FeatureExtractor`,
also ``hbfp_timm.FeatureExtractor``), the embeddings of a folder or list and their file (:mod:`.embeddings`),
batched extraction over a data loader (:mod:`.features`), pictures of ranked lists and CMC curves
(:mod:`.visualize`) and deployment export (:mod:`.export`)."""
