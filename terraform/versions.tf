# Terraform and provider versions. State holds the Redis AUTH string (in the REDIS_URL secret
# version): keep it in a protected remote backend for anything beyond a trial environment.
terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 7.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4, < 3.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
