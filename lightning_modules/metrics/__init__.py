"""Evaluation metrics shared by the stages, one file per family: `sync`, `image`, `identity`, `expression`
(the main paper's metrics: PSNR, SSIM, LPIPS, LMD, CSIM, Sync, AED).

Plain functions of tensors (AED, LMD of projected landmarks, the SyncNet offset search, the LSE protocol
of joonson/syncnet_python), and torchmetrics `Metric`s where a metric accumulates over a split and must
reduce across DDP ranks (LMD of generated images, LPIPS, CSIM, AED, LSE-D / LSE-C, temporal stability);
PSNR and SSIM are torchmetrics' own, FID is torchmetrics' on torch-fidelity's Inception (`fid_metric`).
Every accumulating metric keeps sums and counts reduced by summing, so a split's value is exact under DDP.
LightningModules, callbacks and bench scripts compute a metric the same way.

Pretrained files are never downloaded: each backend reads its file from `paths.weights_dir` and, when it
is missing, either is switched off with a warning naming the file (LPIPS, FID) or raises an error naming
it (SyncNet v2, ArcFace, face_alignment's FAN)."""
