# Terraform and provider versions. State holds the Redis AUTH string (in the REDIS_URL secret
# version): keep it in a protected remote backend for anything beyond a trial environment.
terraform {
  # 1.9: a variable's validation may refer to other variables (gpu_count checks gpu_machine_type).
  required_version = ">= 1.9"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 7.0"
    }
    # google_project_service_identity (the service agents made before they are bound) is in the
    # beta provider only: https://registry.terraform.io/providers/hashicorp/google-beta/latest/docs/resources/project_service_identity
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 6.0, < 7.0"
    }
    # time_sleep: the wait for IAM grants to service agents to propagate (iam.tf).
    time = {
      source  = "hashicorp/time"
      version = ">= 0.9, < 1.0"
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

provider "google-beta" {
  project = var.project_id
  region  = var.region
}
