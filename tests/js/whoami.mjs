// Resolves credentials through the SDK's default chain (nothing configured here but what the environment
// says), then asks STS who we are and lists the bucket. Prints one JSON line for the test to read.
// Usage: node whoami.mjs ENDPOINT_URL BUCKET
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import { S3Client, ListObjectsV2Command } from "@aws-sdk/client-s3";

const [endpoint, bucket] = process.argv.slice(2);
const region = "us-east-1";
const sts = new STSClient({ region, endpoint });
const identity = await sts.send(new GetCallerIdentityCommand({}));
const s3 = new S3Client({ region, endpoint, forcePathStyle: true });
const listing = await s3.send(new ListObjectsV2Command({ Bucket: bucket }));
const credentials = await sts.config.credentials();
console.log(JSON.stringify({
  arn: identity.Arn,
  account: identity.Account,
  keys: (listing.Contents ?? []).map((o) => o.Key),
  expiration: credentials.expiration?.toISOString(),
}));
