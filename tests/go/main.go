// whoami: the AWS SDK for Go v2's default configuration, unmodified, against the daemon and moto.
//
// Usage: whoami ENDPOINT BUCKET. Prints one JSON line: which credential provider the default chain chose,
// the region it resolved, the identity STS sees, and the keys of BUCKET (path-style, at ENDPOINT).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func main() {
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(endpoint, bucket string) error {
	ctx := context.Background()
	// Only STS and S3 go to moto; the credential providers keep their own endpoints (IMDS, container URL).
	toMoto := aws.EndpointResolverWithOptionsFunc(
		func(service, region string, options ...interface{}) (aws.Endpoint, error) {
			return aws.Endpoint{URL: endpoint, HostnameImmutable: true, SigningRegion: region}, nil
		})
	// The region comes from the environment, or else from the instance identity document (IMDS only).
	cfg, err := config.LoadDefaultConfig(ctx, config.WithEC2IMDSRegion(),
		config.WithEndpointResolverWithOptions(toMoto))
	if err != nil {
		return fmt.Errorf("LoadDefaultConfig: %w", err)
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	identity, err := sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return fmt.Errorf("GetCallerIdentity: %w", err)
	}
	listing, err := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true }).
		ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	if err != nil {
		return fmt.Errorf("ListObjectsV2: %w", err)
	}
	keys := []string{}
	for _, object := range listing.Contents {
		keys = append(keys, aws.ToString(object.Key))
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]interface{}{
		"source": creds.Source, "region": cfg.Region, "arn": aws.ToString(identity.Arn),
		"account": aws.ToString(identity.Account), "keys": keys,
	})
}
